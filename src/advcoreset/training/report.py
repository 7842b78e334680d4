"""One console line per epoch and one for the final result."""

from __future__ import annotations

from typing import Any


def epoch_line(r: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs} [{r['phase']}]", f"n={r['n_train']}", f"loss {r['train_loss']:.4f}",
             f"adv-acc {r['train_adv_acc']:.3f}", f"lr {r['lr']:.3g}", f"{r['time_epoch_wall']:.1f}s"]
    if r.get("time_selection_attack") is not None:
        parts.append(f"select {r['time_selection_attack'] + r['time_selection_solver']:.1f}s")
    if r.get("grad_error") is not None:
        parts.append(f"grad-err {r['grad_error']:.3f}")
    parts += [f"{k} {v:.4f}" for k, v in r.items() if k.endswith("_acc") and k.startswith(("test_", "val_"))]
    return " | ".join(parts)


def final_line(r: dict[str, Any]) -> str:
    accs = ", ".join(f"{k[5:]} {v:.4f}" for k, v in r.items() if k.startswith("test_") and k.endswith("_acc"))
    line = f"final: {accs} | train time {r['time_train_total']:.1f}s (eval {r['time_final_eval']:.1f}s)"
    if r.get("time_selection"):
        line += f" | selection {r['time_selection']:.1f}s of it"
    if r.get("grad_error_mean") is not None:
        n = r["selection_rounds_with_error"]
        line += f" | coreset gradient error {r['grad_error_mean']:.4f} (mean of {n} round{'s' if n != 1 else ''})"
    if r.get("time_error_pass"):
        line += f" (its measuring pass {r['time_error_pass']:.1f}s, not in the train time)"
    return line
