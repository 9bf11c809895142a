"""Plan a model's arena end to end: lifetimes, offsets, embedding, measurement, fit to a profile."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.plan.assign import assign_offsets, find_conflicts
from lepton_edge.plan.embed import embed_plan
from lepton_edge.plan.lifetimes import Lifetime, check_plannable, live_bytes_per_op, lower_bound, tensor_lifetimes
from lepton_edge.plan.measure import estimate_tail, measure_with_tflm, tflm_available
from lepton_edge.plan.scratch import scratch_requests
from lepton_edge.plan.target import HOST_LABEL
from lepton_edge.tflite.model import Subgraph, TFLiteModel, align_up
from lepton_edge.tflite.reader import parse_model

if TYPE_CHECKING:
    from lepton_edge.plan.target import TargetMeasurer
    from lepton_edge.profiles import Profile


@dataclass(frozen=True)
class PlacedTensor:
    tensor: int
    name: str
    offset: int
    size: int
    first_op: int
    last_op: int


@dataclass(frozen=True)
class FitVerdict:
    """Whether the model fits a profile, with the numbers behind the answer."""

    profile: str
    runtime: str
    fits: bool
    ram_needed_bytes: int  # arena (recommended + margin) on tflm; activations + model on litert
    ram_budget_bytes: int
    ram_estimated: bool
    arena_margin_bytes: int
    flash_needed_bytes: int
    flash_budget_bytes: int
    reasons: tuple[str, ...] = ()


@dataclass
class ArenaPlan:
    """Everything ``lepton-edge plan`` reports. ``measured`` says which figures came from TFLite Micro."""

    source: str
    operators: int
    tensors: int
    planned_tensors: int
    lower_bound_bytes: int  # docs/DESIGN.md's lower bound: tensors only
    lower_bound_with_scratch_bytes: int  # the same with kernels' scratch requests counted
    scratch_bytes: int
    head_bytes: int
    tail_bytes: int
    recommended_arena_bytes: int
    strategy: str
    planning_ms: float
    placements: list[PlacedTensor]
    live_bytes_per_op: list[int]
    measured: dict[str, str] = field(default_factory=dict)
    tflm_head_bytes: int | None = None  # what TFLite Micro reports as head running our plan
    tflm_default_head_bytes: int | None = None  # its head for the model as given
    fit: FitVerdict | None = None
    notes: list[str] = field(default_factory=list)
    tflm_error: str | None = None  # why TFLite Micro cannot run the model, when it cannot
    # Where tail_bytes and recommended_arena_bytes were measured: "host x86-64 tflite-micro",
    # "cortex-m4 (qemu mps2-an386), cmsis-nn" (the target: no kernel margin on top), or "estimated".
    measured_on: str = "estimated"
    host_tail_bytes: int | None = None  # the host's figures, kept when the target's replace them
    host_recommended_arena_bytes: int | None = None
    target_head_bytes: int | None = None  # TFLite Micro's head on the target (non-persistent)
    target_used_bytes: int | None = None  # head + tail on the target, at the full arena
    target_error: str | None = None  # why the target could not measure the model, when it could not
    planned_model: bytes = b""  # the model with the plan embedded

    @property
    def on_target(self) -> bool:
        """The arena figures come from the target's own kernels (no kernel-library margin to add)."""
        return self.target_used_bytes is not None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("planned_model", "placements", "fit")}
        d["offsets"] = [asdict(p) for p in self.placements]
        d["fit"] = asdict(self.fit) if self.fit else None
        if self.fit is not None:
            d["fits"] = self.fit.fits
        return d


def plan_model(model_bytes: bytes, source: str = "model", *, profile: Profile | None = None,
               measure: bool = True, search_seconds: float = 1.0,
               target: TargetMeasurer | None = None) -> ArenaPlan:
    """Plan ``model_bytes``. Raises :class:`BadInput` for models that cannot be planned statically.

    With ``target`` (:func:`lepton_edge.firmware_build.target.resolve_measure`) the tail and the recommended
    arena are measured on the emulated core with the profile's kernels; the host's stay alongside."""
    model = parse_model(model_bytes, source)
    subgraph = check_plannable(model, source)
    n_ops = len(subgraph.operators)

    started = time.perf_counter()
    lifetimes = tensor_lifetimes(subgraph)
    bound = lower_bound(lifetimes, n_ops)
    scratch = scratch_lifetimes(subgraph)
    bound_with_scratch = lower_bound(lifetimes + scratch, n_ops)
    assignment = assign_offsets(lifetimes + scratch, n_ops, search_seconds=search_seconds)
    planning_ms = (time.perf_counter() - started) * 1000
    conflicts = find_conflicts(lifetimes + scratch, assignment.offsets)
    if conflicts:  # a bug, not bad input: never ship an overlapping plan
        raise AssertionError(f"planner produced overlapping tensors {conflicts[:3]}")

    tensor_offsets = {t: off for t, off in assignment.offsets.items() if t >= 0}
    planned_model = embed_plan(model_bytes, model, tensor_offsets)
    plan = ArenaPlan(
        source=source,
        operators=n_ops,
        tensors=len(subgraph.tensors),
        planned_tensors=len(lifetimes),
        lower_bound_bytes=bound,
        lower_bound_with_scratch_bytes=bound_with_scratch,
        scratch_bytes=sum(s.size for s in scratch),
        head_bytes=assignment.head_bytes,
        tail_bytes=0,
        recommended_arena_bytes=0,
        strategy=assignment.strategy,
        planning_ms=round(planning_ms, 3),
        placements=_placements(lifetimes + scratch, assignment.offsets),
        live_bytes_per_op=live_bytes_per_op(lifetimes, n_ops),
        planned_model=planned_model,
    )
    _fill_arena_figures(plan, model, model_bytes, measure=measure,
                        pointer_bytes=profile.pointer_bytes if profile else 8)
    if target is not None and measure and plan.tflm_error is None:
        _measure_on_target(plan, target)
    if profile is not None:
        plan.fit = check_fit(plan, len(planned_model), profile)
    return plan


def scratch_lifetimes(subgraph: Subgraph) -> list[Lifetime]:
    """Kernel scratch requests as one-operator lifetimes with negative ids (never embedded)."""
    return [Lifetime(-(i + 1), f"scratch:{r.opcode}@{r.op}", align_up(r.nbytes), r.op, r.op)
            for i, r in enumerate(scratch_requests(subgraph))]


def _placements(lifetimes: list[Lifetime], offsets: dict[int, int]) -> list[PlacedTensor]:
    return [PlacedTensor(lt.tensor, lt.name, offsets[lt.tensor], lt.size, lt.first, lt.last)
            for lt in sorted(lifetimes, key=lambda x: (offsets[x.tensor], x.first))]


def _fill_arena_figures(plan: ArenaPlan, model: TFLiteModel, original: bytes, *, measure: bool,
                        pointer_bytes: int) -> None:
    plan.measured["head_bytes"] = "planned"
    plan.measured["lower_bound_bytes"] = "computed"
    if measure and tflm_available():
        try:
            ours = measure_with_tflm(plan.planned_model, plan.head_bytes + estimate_tail(model), plan.source)
            theirs = measure_with_tflm(original, plan.head_bytes + estimate_tail(model), plan.source)
        except BadInput as exc:
            # Still a valid plan (for LiteRT boards, say); the figures become estimates.
            plan.tflm_error = str(exc).split(": ", 1)[-1]
            plan.notes.append(plan.tflm_error)
            _estimate(plan, model, pointer_bytes, "estimated (TFLite Micro cannot run this model)")
            return
        plan.tflm_default_head_bytes = theirs.head_bytes
        if ours.head_bytes > plan.head_bytes:
            plan.notes.append(f"TFLite Micro's kernels requested {ours.head_bytes - plan.head_bytes} bytes of "
                              "scratch that the plan did not reserve")
        if ours.head_bytes > theirs.head_bytes:
            # Never ship a plan worse than TFLite Micro's own: leave the model to its run-time planner.
            plan.notes.append("the offline plan lost to TFLite Micro's own plan; the model is left unplanned")
            plan.planned_model = original
            plan.strategy = "tflite-micro (run-time plan)"
            plan.head_bytes = theirs.head_bytes
            ours = theirs
        plan.tail_bytes = plan.host_tail_bytes = ours.tail_bytes
        plan.recommended_arena_bytes = plan.host_recommended_arena_bytes = ours.smallest_arena_bytes
        plan.tflm_head_bytes = ours.head_bytes
        plan.measured_on = HOST_LABEL
        note = "measured (TFLite Micro, x86-64 reference kernels; a 32-bit MCU's tail is smaller)"
        plan.measured.update(tail_bytes=note, recommended_arena_bytes=note, tflm_head_bytes=note,
                             tflm_default_head_bytes=note)
    else:
        _estimate(plan, model, pointer_bytes,
                  "estimated (tflite-micro not installed)" if measure else "estimated (measurement skipped)")


def _measure_on_target(plan: ArenaPlan, target: TargetMeasurer) -> None:
    """Replace the tail and the recommended arena with the target's (the host's stay in host_*)."""
    try:
        fig = target.measure(plan.planned_model)
    except CheckFailed as exc:
        plan.target_error = str(exc)
        plan.notes.append(f"{exc}; the figures are the host's")
        return
    plan.tail_bytes = fig.tail_bytes
    plan.recommended_arena_bytes = fig.min_arena_bytes
    plan.target_head_bytes = fig.head_bytes
    plan.target_used_bytes = fig.used_bytes
    plan.measured_on = target.label
    note = f"measured (TFLite Micro on the target: {target.label}; its kernels' scratch included)"
    plan.measured.update(tail_bytes=note, recommended_arena_bytes=note, target_head_bytes=note)


def _estimate(plan: ArenaPlan, model: TFLiteModel, pointer_bytes: int, why: str) -> None:
    plan.tail_bytes = estimate_tail(model, pointer_bytes)
    plan.recommended_arena_bytes = align_up(plan.head_bytes + plan.tail_bytes + 1024)
    plan.measured.update(tail_bytes=why, recommended_arena_bytes=why)


def check_fit(plan: ArenaPlan, model_size: int, profile: Profile) -> FitVerdict:
    reasons = []
    if profile.runtime == "tflm" and plan.tflm_error:
        reasons.append(f"runtime: TFLite Micro cannot run this model ({plan.tflm_error})")
    # Measured on the target, the recommended arena holds the kernels' scratch: no margin on top.
    margin = 0 if plan.on_target else profile.arena_margin_bytes
    if profile.runtime == "tflm" and plan.target_error:
        reasons.append(f"runtime: {plan.target_error}")
    if profile.runtime == "tflm":
        ram_needed = plan.recommended_arena_bytes + margin
        ram_estimated = not plan.measured.get("recommended_arena_bytes", "").startswith("measured")
    else:
        # LiteRT allocates activations itself and keeps the model in memory: an estimate.
        ram_needed = plan.head_bytes + model_size
        ram_estimated = True
    if ram_needed > profile.ram_budget_bytes:
        reasons.append(f"RAM: needs {ram_needed} bytes, budget {profile.ram_budget_bytes} "
                       f"({profile.ram_share:.0%} of {profile.ram_bytes})")
    if model_size > profile.flash_budget_bytes:
        reasons.append(f"flash: model is {model_size} bytes, budget {profile.flash_budget_bytes} "
                       f"({profile.flash_share:.0%} of {profile.flash_bytes})")
    return FitVerdict(
        profile=profile.name,
        runtime=profile.runtime,
        fits=not reasons,
        ram_needed_bytes=ram_needed,
        ram_budget_bytes=profile.ram_budget_bytes,
        ram_estimated=ram_estimated,
        arena_margin_bytes=margin if profile.runtime == "tflm" else 0,
        flash_needed_bytes=model_size,
        flash_budget_bytes=profile.flash_budget_bytes,
        reasons=tuple(reasons),
    )
