"""The OTA state machine on its own: events in, actions out, no broker, no files, no clock."""

from __future__ import annotations

from lepton_edge.agent.update import (
    Activate,
    Admit,
    Drop,
    ModelChanged,
    OtaOptions,
    PublishProgress,
    RequestBlock,
    Resend,
    RunCommand,
    UpdateMachine,
    Verify,
    WriteBlock,
)
from lepton_edge.mqtt import BLOCK_EXPIRED, CONFIRM, REVERT, Block, OtaCommand, OtaJob, OtaState

SHA = "ab" * 32
JOB = OtaJob("0" * 32, "dep", b"{}", None, SHA, 10_000, 4096, 0.0, 0.0)


def admitted(options: OtaOptions = OtaOptions(), received: int = 0, now: float = 0.0) -> tuple[UpdateMachine, list]:
    m = UpdateMachine(options)
    (admit,) = m.on_job(JOB, now)
    assert admit == Admit(JOB, options.block_size or 4096, None)
    return m, m.on_admitted(JOB, 10_000, SHA, received, now)


def block(offset: int, length: int, job: str = JOB.job, status: int = 0) -> Block:
    return Block(job, bytes.fromhex(SHA[:16]), offset, bytes(length), status)


def kinds(actions: list) -> list:
    return [(type(a).__name__, getattr(a, "state", getattr(a, "offset", None))) for a in actions]


def test_a_job_is_accepted_then_blocks_are_asked_for_a_window_at_a_time():
    _m, actions = admitted(OtaOptions(window=2))
    assert kinds(actions) == [("PublishProgress", OtaState.ACCEPTED), ("PublishProgress", OtaState.DOWNLOADING),
                              ("RequestBlock", 0), ("RequestBlock", 4096)]
    assert actions[3] == RequestBlock(JOB.job, 4096, 4096)


def test_blocks_are_written_in_order_and_the_last_one_leads_to_verify_and_activate():
    m, _ = admitted(OtaOptions(window=3))
    assert [a for a in m.on_data(block(4096, 4096), 1.0) if isinstance(a, WriteBlock)] == []  # waits its turn
    out = m.on_data(block(0, 4096), 1.0)
    assert [(a.offset, len(a.data)) for a in out if isinstance(a, WriteBlock)] == [(0, 4096), (4096, 4096)]
    out = m.on_data(block(8192, 10_000 - 8192), 1.1)
    assert kinds(out)[-2:] == [("PublishProgress", OtaState.VERIFYING), ("Verify", None)] and not m.busy
    verify = out[-1]
    assert isinstance(verify, Verify)
    (activating, activate) = m.on_verified(verify, activate=True)
    assert activating.state is OtaState.ACTIVATING and isinstance(activate, Activate)
    assert m.on_activated(activate, None) == [PublishProgress(JOB, OtaState.HEALTHY, 10_000), ModelChanged()]
    assert m.on_job(JOB, 2.0) == [Resend(JOB.job)]  # the controller may have missed the last word


def test_a_timed_out_block_is_asked_again_only_while_connected():
    m, _ = admitted(OtaOptions(window=1, request_timeout_s=5.0))
    assert m.on_timer(4.0, connected=True) == []
    assert m.on_timer(6.0, connected=False) == []
    assert m.on_timer(6.0, connected=True) == [RequestBlock(JOB.job, 0, 4096)]
    assert m.on_reconnect(7.0) == [RequestBlock(JOB.job, 0, 4096)]


def test_the_rate_limit_paces_requests():
    m, actions = admitted(OtaOptions(window=4, max_bytes_per_s=4096))  # one block a second
    assert [a.offset for a in actions if isinstance(a, RequestBlock)] == [0]
    assert m.on_timer(0.5, connected=True) == []
    assert m.on_timer(1.0, connected=True) == [RequestBlock(JOB.job, 4096, 4096)]


def test_a_delayed_request_is_sent_when_due_unless_answered():
    m, actions = admitted(OtaOptions(window=1, block_delay_s=0.05))
    assert actions[-1] == RequestBlock(JOB.job, 0, 4096, 0.05)
    assert m.on_due(JOB.job, 0, 0.05) == [RequestBlock(JOB.job, 0, 4096)]
    m.on_data(block(0, 4096), 0.1)
    assert m.on_due(JOB.job, 0, 0.2) == []


def test_a_refused_block_fails_the_job_with_the_bytes_held():
    m, _ = admitted()
    out = m.on_data(block(0, 0, status=BLOCK_EXPIRED), 1.0)
    assert out == [Drop(JOB), PublishProgress(JOB, OtaState.FAILED, 0, "the controller refused block 0: job expired")]
    assert m.on_data(block(0, 4096), 1.0) == []  # a job left behind


def test_a_resumed_download_asks_only_for_what_is_missing():
    _m, actions = admitted(received=8192)
    assert actions[0] == PublishProgress(JOB, OtaState.ACCEPTED, 8192)
    assert [a.offset for a in actions if isinstance(a, RequestBlock)] == [8192]


def test_a_newer_job_replaces_the_one_in_progress_only_once_admitted():
    m, _ = admitted()
    newer = OtaJob("1" * 32, "dep2", b"{}", None, SHA, 10_000, 4096, 0.0, 0.0)
    assert m.on_job(newer, 1.0) == [Admit(newer, 4096, JOB)]
    assert m.on_refused(newer, "bad signature")[0].state is OtaState.FAILED and m.busy  # the old one goes on
    m.on_refused(newer, "disk full", replaced=True)
    assert not m.busy


def command(action: str, job: str = "c" * 32, sha256: str | None = SHA) -> OtaCommand:
    return OtaCommand(job, "rollout", action, sha256, 0.0)


def test_a_revert_is_accepted_activated_then_answered_and_a_repeat_gets_the_last_answer():
    m = UpdateMachine()
    revert = command(REVERT)
    out = m.on_command(revert, 0.0)
    assert out == [PublishProgress(revert, OtaState.ACCEPTED), PublishProgress(revert, OtaState.ACTIVATING),
                   RunCommand(revert)]
    assert m.on_command_done(out[-1], None) == [PublishProgress(revert, OtaState.HEALTHY), ModelChanged()]
    assert m.on_command(revert, 1.0) == [Resend(revert.job)]
    refused = command(REVERT, "d" * 32, None)
    (run,) = [a for a in m.on_command(refused, 2.0) if isinstance(a, RunCommand)]
    assert m.on_command_done(run, "no staged update is held") == [
        PublishProgress(refused, OtaState.FAILED, 0, "no staged update is held"), ModelChanged()]
    assert m.on_command(refused, 3.0) == [Resend(refused.job)]


def test_a_confirm_has_no_activating_step_and_changes_no_model():
    m = UpdateMachine()
    confirm = command(CONFIRM)
    out = m.on_command(confirm, 0.0)
    assert out == [PublishProgress(confirm, OtaState.ACCEPTED), RunCommand(confirm)]
    assert m.on_command_done(out[-1], None) == [PublishProgress(confirm, OtaState.HEALTHY)]


def test_a_revert_abandons_the_download_in_progress_and_a_confirm_does_not():
    m, _ = admitted()
    out = m.on_command(command(CONFIRM), 1.0)
    assert m.busy and not [a for a in out if isinstance(a, Drop)]
    out = m.on_command(command(REVERT, "e" * 32), 1.0)
    assert isinstance(out[0], Drop) and out[0].job == JOB
    failed = out[1]
    assert failed.job == JOB and failed.state is OtaState.FAILED and "abandoned: a revert" in failed.reason
    assert not m.busy and m.on_data(block(0, 4096), 1.1) == []  # late blocks of the abandoned job are ignored
    assert m.on_job(JOB, 2.0) == [Resend(JOB.job)]  # and the job sent again gets its answer
