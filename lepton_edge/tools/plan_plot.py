"""A picture of an arena plan: operators across, arena offsets up, one box per tensor.

Host-side only (matplotlib); the planner itself does not need it.
"""

from __future__ import annotations

import io
import os

from lepton_edge.fsio import atomic_write_bytes
from lepton_edge.plan.planner import ArenaPlan


def render_plan_png(plan: ArenaPlan, title: str | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(max(9.0, min(20.0, plan.operators * 0.35 + 6.5)), 5.5), dpi=110)
    cmap = plt.get_cmap("tab20")
    for i, p in enumerate(plan.placements):
        ax.add_patch(Rectangle((p.first_op - 0.45, p.offset), p.last_op - p.first_op + 0.9, p.size,
                               facecolor=cmap(i % 20), edgecolor="black", linewidth=0.6, alpha=0.85))
        if p.size >= plan.head_bytes * 0.06 and p.last_op - p.first_op >= 0:
            ax.text((p.first_op + p.last_op) / 2, p.offset + p.size / 2, f"t{p.tensor}",
                    ha="center", va="center", fontsize=7)
    ax.axhline(plan.lower_bound_bytes, color="tab:red", linestyle="--", linewidth=1.2,
               label=f"lower bound {plan.lower_bound_bytes:,} B")
    ax.axhline(plan.head_bytes, color="black", linewidth=1.0, label=f"head (planned) {plan.head_bytes:,} B")
    if plan.tflm_default_head_bytes and plan.tflm_default_head_bytes != plan.head_bytes:
        ax.axhline(plan.tflm_default_head_bytes, color="tab:gray", linestyle=":", linewidth=1.0,
                   label=f"TFLite Micro's own head {plan.tflm_default_head_bytes:,} B")
    ax.step(range(plan.operators), plan.live_bytes_per_op, where="mid", color="tab:red", alpha=0.35,
            linewidth=1.0, label="live bytes per operator")
    top = max(plan.head_bytes, plan.lower_bound_bytes, plan.tflm_default_head_bytes or 0)
    ax.set_xlim(-0.8, plan.operators - 0.2)
    ax.set_ylim(0, top * 1.12 if top else 1)
    ax.set_xlabel("operator (execution order)")
    ax.set_ylabel("arena offset (bytes)")
    ax.set_title(title or f"{os.path.basename(plan.source)}: head {plan.head_bytes:,} B, "
                 f"tail {plan.tail_bytes:,} B, arena {plan.recommended_arena_bytes:,} B")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def save_plan_png(plan: ArenaPlan, path: str | os.PathLike[str]) -> None:
    atomic_write_bytes(path, render_plan_png(plan))
