"""Fit a converted model to a device profile: plan and embed the arena, check flash and RAM.

On ``tflm`` boards the RAM figure is the arena TFLite Micro needs (measured when ``tflite-micro`` is
installed) plus the profile's kernel-library margin; on ``litert`` boards it is an estimate,
activations plus weights, and labelled so. A model TFLite Micro cannot run still fits a ``litert``
board (the planner's figures become estimates); on a ``tflm`` board that is a reason it does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from lepton_edge.errors import BadInput
from lepton_edge.inspection import data_types
from lepton_edge.plan.planner import ArenaPlan, FitVerdict, plan_model
from lepton_edge.profiles import Profile
from lepton_edge.runtime.op_support import unsupported_ops, unsupported_reason, unsupported_types
from lepton_edge.tflite.model import align_up
from lepton_edge.tflite.reader import parse_model

if TYPE_CHECKING:
    from lepton_edge.plan.target import TargetMeasurer


@dataclass
class FitResult:
    model_bytes: bytes  # with the arena plan embedded when the model could be planned
    plan: ArenaPlan | None
    verdict: FitVerdict
    arena: dict  # the manifest's "arena"
    tflm_runs: bool  # TFLite Micro ran the model while measuring it
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.verdict.fits


def fit_to_profile(model_bytes: bytes, source: str, profile: Profile, target: TargetMeasurer | None = None
                   ) -> FitResult:
    """Plan ``model_bytes`` for ``profile`` and check it against the profile's budgets.

    With ``target`` the tail and the recommended arena are measured on the emulated core that plays
    the profile (its kernels' scratch included: no margin on top); the host's figures stay alongside."""
    model = parse_model(model_bytes, source)
    opcodes = [op.opcode for sg in model.subgraphs for op in sg.operators]
    dtypes = data_types(model)
    reasons = []
    bad_ops = unsupported_ops(opcodes, profile.runtime)
    if bad_ops:
        what = f"{profile.name}'s firmware (tflm, core/ops.h)" if profile.runtime == "tflm" else profile.runtime
        reasons.append(f"runtime: {what} has no kernel for "
                       + "; ".join(unsupported_reason(op, profile.runtime) for op in bad_ops))
    bad_types = unsupported_types(dtypes, profile.tensor_types)
    if bad_types:
        reasons.append(f"tensor types: {profile.name} runs {', '.join(profile.tensor_types)}, "
                       f"not {', '.join(bad_types)}")
    notes: list[str] = []
    try:
        plan = plan_model(model_bytes, source, profile=profile, target=target)
    except BadInput as exc:
        why = str(exc).split(": ", 1)[-1]
        if profile.runtime == "tflm":
            reasons.insert(0, f"runtime: TFLite Micro cannot plan this model ({why})")
        else:
            notes.append(f"not planned ({why}); the RAM figure is an estimate")
        verdict = _unplanned_verdict(model, model_bytes, profile, reasons)
        return FitResult(model_bytes, None, verdict, _unplanned_arena(model, profile), False, notes)
    assert plan.fit is not None
    verdict = plan.fit
    if reasons:
        verdict = replace(verdict, fits=False, reasons=tuple(reasons) + verdict.reasons)
    tflm_runs = plan.tflm_error is None and plan.measured.get("tail_bytes", "").startswith("measured")
    if plan.tflm_error and profile.runtime == "litert":
        notes.append(f"{plan.tflm_error.rstrip('.')}; fine for {profile.name}, which runs LiteRT")
    notes += [n for n in plan.notes if n != plan.tflm_error]
    return FitResult(plan.planned_model, plan, verdict, arena_figures(plan, profile), tflm_runs, notes)


def arena_figures(plan: ArenaPlan, profile: Profile) -> dict:
    """The manifest's ``arena`` object: each figure with whether it was measured or estimated, and where
    (``measured_on``). ``host_recommended_bytes`` is the x86-64 figure the host's own interpreters
    (validate's reference, the Python simulator, the self-test) size their arena with."""
    margin = 0 if plan.on_target else profile.arena_margin_bytes
    measured_run = plan.measured.get("recommended_arena_bytes", "").startswith("measured")
    head_label = (f"measured (TFLite Micro ran the embedded plan; its head was {plan.tflm_head_bytes} bytes)"
                  if measured_run and plan.tflm_head_bytes is not None
                  else "estimated (the plan's offsets; TFLite Micro did not run the model)")
    return {
        "head_bytes": plan.head_bytes,
        "tail_bytes": plan.tail_bytes,
        "lower_bound_bytes": plan.lower_bound_bytes,
        "recommended_bytes": plan.recommended_arena_bytes,
        "margin_bytes": margin,
        "total_bytes": align_up(plan.recommended_arena_bytes + margin),
        "measured_on": plan.measured_on,
        "host_recommended_bytes": plan.host_recommended_arena_bytes,
        "host_tail_bytes": plan.host_tail_bytes,
        "measured": {
            "head_bytes": head_label,
            "tail_bytes": _label(plan.measured.get("tail_bytes", "estimated")),
            "lower_bound_bytes": "measured (computed from the tensors' lifetimes: no plan uses less)",
            "recommended_bytes": _label(plan.measured.get("recommended_arena_bytes", "estimated")),
            "margin_bytes": (f"measured (0: {plan.measured_on} includes the {profile.kernel_library} kernels' scratch)"
                             if plan.on_target else
                             f"estimated (profile {profile.name}: scratch of the {profile.kernel_library} kernels)"),
            "total_bytes": "estimated (recommended + margin, rounded up to 16)" if margin or not measured_run
            else _label(plan.measured.get("recommended_arena_bytes", "estimated")),
        },
    }


def _label(text: str) -> str:
    return text if text.startswith(("measured", "estimated")) else f"estimated ({text})"


def _activation_bytes(model) -> int:
    sg = model.main
    return sum(align_up(t.nbytes or 0) for t in sg.tensors if not t.has_data and not t.is_variable)


def _unplanned_verdict(model, model_bytes: bytes, profile: Profile, reasons: list[str]) -> FitVerdict:
    ram = _activation_bytes(model) + len(model_bytes)
    if ram > profile.ram_budget_bytes:
        reasons.append(f"RAM: needs {ram} bytes (estimate: activations plus weights), budget "
                       f"{profile.ram_budget_bytes} ({profile.ram_share:.0%} of {profile.ram_bytes})")
    if len(model_bytes) > profile.flash_budget_bytes:
        reasons.append(f"flash: model is {len(model_bytes)} bytes, budget {profile.flash_budget_bytes} "
                       f"({profile.flash_share:.0%} of {profile.flash_bytes})")
    return FitVerdict(profile=profile.name, runtime=profile.runtime, fits=not reasons, ram_needed_bytes=ram,
                      ram_budget_bytes=profile.ram_budget_bytes, ram_estimated=True, arena_margin_bytes=0,
                      flash_needed_bytes=len(model_bytes), flash_budget_bytes=profile.flash_budget_bytes,
                      reasons=tuple(reasons))


def _unplanned_arena(model, profile: Profile) -> dict:
    activations = _activation_bytes(model)
    why = "estimated (the model could not be planned: sum of all activations)"
    return {"head_bytes": activations, "tail_bytes": 0, "lower_bound_bytes": 0, "recommended_bytes": activations,
            "margin_bytes": profile.arena_margin_bytes,
            "total_bytes": align_up(activations + profile.arena_margin_bytes),
            "measured_on": "estimated", "host_recommended_bytes": None, "host_tail_bytes": None,
            "measured": {k: why for k in ("head_bytes", "tail_bytes", "lower_bound_bytes", "recommended_bytes",
                                          "margin_bytes", "total_bytes")}}
