"""The A/B model store on real files: verification before any slot is touched, pointer moves, recovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lepton_edge.agent.policy import InstallPolicy
from lepton_edge.agent.store import ModelStore
from lepton_edge.artifact import generate_keypair, load_private_key, load_public_key, sign_manifest
from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.profiles import load_profile


def parts(artifact: Path) -> tuple[bytes, bytes | None, bytes]:
    sig = artifact / "manifest.sig"
    return ((artifact / "manifest.json").read_bytes(), sig.read_bytes() if sig.exists() else None,
            (artifact / "model.tflite").read_bytes())


@pytest.fixture
def policy(signing) -> InstallPolicy:
    return InstallPolicy(trusted_keys=(load_public_key(signing[1]),), require_signature=True,
                         profile=load_profile("raspberry-pi-4"), backend="litert")


def state_file(store_dir: Path) -> dict:
    return json.loads((store_dir / "state.json").read_text())


def test_install_activate_confirm_then_the_next_goes_to_the_other_slot(tmp_path, make_artifact, policy):
    store = ModelStore(tmp_path / "s", policy)
    assert store.active() is None
    slot = store.install(*parts(make_artifact("kws", 1)))
    assert slot == "a" and store.active() is None  # installed, not active yet
    store.activate("a")
    assert store.active().pending and state_file(tmp_path / "s")["pending"] is True
    store.confirm()
    active = store.active()
    assert (active.slot, active.pending, active.artifact.version) == ("a", False, 1)
    assert store.state().confirmed_version == 1

    assert store.install(*parts(make_artifact("kws", 1))) == "a"  # identical to the active one: nothing written
    assert store.install(*parts(make_artifact("ad", 2))) == "b"
    store.activate("b")
    assert store.rollback() == "a"
    assert store.active().artifact.name == "kws_ref_model_int8" and not store.state().pending
    with pytest.raises(BadInput, match="nothing to roll back"):
        store.rollback()


def test_verification_comes_before_any_write(tmp_path, make_artifact, policy):
    store = ModelStore(tmp_path / "s", policy)
    manifest, sig, model = parts(make_artifact("kws", 1))
    with pytest.raises(BadInput, match="signature does not verify"):
        store.install(manifest.replace(b'"version": 1', b'"version": 9'), sig, model)
    with pytest.raises(BadInput, match="unsigned, and signatures are required"):
        store.install(manifest, None, model)
    corrupt = bytearray(model)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(BadInput, match="sha256"):
        store.install(manifest, sig, bytes(corrupt))
    with pytest.raises(BadInput, match="size"):
        store.install(manifest, sig, model + b"\0")
    other = tmp_path / "other-keys"
    generate_keypair(other)
    with pytest.raises(BadInput, match="does not verify with any trusted key"):
        store.install(manifest, sign_manifest(manifest, load_private_key(other / "signing.key")), model)
    assert not any((tmp_path / "s" / "slots").iterdir())  # no slot was touched


def test_versions_only_grow(tmp_path, make_artifact, policy):
    store = ModelStore(tmp_path / "s", policy)
    store.activate(store.install(*parts(make_artifact("kws", 5))))
    store.confirm()
    with pytest.raises(BadInput, match="version 4 is lower than the confirmed version 5"):
        store.install(*parts(make_artifact("ad", 4)))
    assert store.install(*parts(make_artifact("ad", 5))) == "b"  # the same version is allowed


def test_models_that_do_not_fit_are_refused(tmp_path, make_artifact, signing):
    keys = (load_public_key(signing[1]),)
    tflm_small = InstallPolicy(keys, True, load_profile("arduino-nano-33-ble"), "tflm")  # 153.6 KiB for the arena
    store = ModelStore(tmp_path / "s", tflm_small)
    store.install(*parts(make_artifact("kws", 1, profile="stm32l4r5")))  # fits
    store.close()
    text = load_profile("arduino-nano-33-ble").path.read_text()

    def variant(name: str, old: str, new: str) -> InstallPolicy:
        path = tmp_path / f"{name}.toml"
        assert old in text
        path.write_text(text.replace('name = "arduino-nano-33-ble"', f'name = "{name}"').replace(old, new))
        return InstallPolicy(keys, True, load_profile(str(path)), "tflm")

    store = ModelStore(tmp_path / "s2", variant("little-flash", "flash_bytes = 1048576", "flash_bytes = 65536"))
    with pytest.raises(CheckFailed, match="flash budget of 39321 bytes"):
        store.install(*parts(make_artifact("kws", 1, profile="stm32l4r5")))  # 54 KB model
    store.close()
    store = ModelStore(tmp_path / "s3", variant("little-ram", "ram_bytes = 262144", "ram_bytes = 32768"))
    with pytest.raises(CheckFailed, match=r"needs .* bytes of RAM on tflm, little-ram's budget is 19660"):
        store.install(*parts(make_artifact("kws", 1, profile="stm32l4r5")))  # 24 KB arena
    assert not any((tmp_path / "s3" / "slots").iterdir())


def test_a_pending_activation_found_at_open_rolls_back(tmp_path, make_artifact, policy):
    store = ModelStore(tmp_path / "s", policy)
    store.activate(store.install(*parts(make_artifact("kws", 1))))
    store.confirm()
    store.activate(store.install(*parts(make_artifact("ad", 2))))
    with pytest.raises(BadInput, match="pending its health check"):
        store.install(*parts(make_artifact("ic", 3)))  # slot a is the rollback target now
    store.close()  # the process "dies" with slot b pending

    reopened = ModelStore(tmp_path / "s", policy)
    assert reopened.recovered_from == "b"
    assert reopened.active().slot == "a" and reopened.active().artifact.version == 1
    assert reopened.state().confirmed_version == 1


def test_one_process_owns_a_store(tmp_path, policy):
    store = ModelStore(tmp_path / "s", policy)
    with pytest.raises(BadInput, match="in use by another agent"):
        ModelStore(tmp_path / "s", policy)
    store.close()
    ModelStore(tmp_path / "s", policy).close()


def test_leftovers_of_interrupted_writes_are_removed_and_a_corrupt_state_is_reported(tmp_path, policy):
    d = tmp_path / "s"
    (d / "slots" / ".b.xyz.partial").mkdir(parents=True)
    (d / "slots" / ".b.old").mkdir()
    (d / ".state.json.abc.tmp").write_text("{")
    ModelStore(d, policy).close()
    assert sorted(p.name for p in (d / "slots").iterdir()) == []
    assert not (d / ".state.json.abc.tmp").exists()
    (d / "state.json").write_text('{"schema": 1, "active": "c"}')
    with pytest.raises(BadInput, match="corrupt store state"):
        ModelStore(d, policy)


def test_resumable_download(tmp_path, make_artifact, policy):
    store = ModelStore(tmp_path / "s", policy)
    manifest, sig, model = parts(make_artifact("ic", 7))
    part = store.open_partial(manifest, sig)
    assert (part.size, part.received) == (len(model), 0)
    part.write(0, model[:40000])
    # The device reboots: the same manifest finds the same download, which resumes where it stopped.
    store.close()
    store = ModelStore(tmp_path / "s", policy)
    again = store.open_partial(manifest, sig)
    assert again.directory == part.directory and again.received == 40000
    with pytest.raises(BadInput, match="outside the model"):
        again.write(len(model) - 10, b"x" * 11)
    again.write(again.received, model[40000:])
    slot = store.commit_partial(again)
    assert slot == "a" and not part.directory.exists()
    assert store.activate(slot).version == 7

    with pytest.raises(BadInput, match="signature does not verify"):
        store.open_partial(manifest.replace(b'"version": 7', b'"version": 8'), sig)
    store.confirm()
    manifest2, sig2, model2 = parts(make_artifact("kws", 8))
    bad = store.open_partial(manifest2, sig2)
    bad.write(0, model2[::-1])
    with pytest.raises(BadInput, match="sha256"):
        store.commit_partial(bad)
    assert not bad.directory.exists()  # a corrupt download is discarded, never installed
    assert store.active().artifact.version == 7


# --- staged activations: the floor held, confirm_floor, revert ------------------------------------------

def sha(artifact: Path) -> str:
    return json.loads((artifact / "manifest.json").read_text())["model"]["sha256"]


def staged_store(tmp_path: Path, make_artifact, policy, *, before: Path | None) -> ModelStore:
    """A store that ran ``before`` (confirmed; None: no model) and then took kws v2 staged, healthy."""
    store = ModelStore(tmp_path / "s", policy)
    if before is not None:
        store.activate(store.install(*parts(before)))
        store.confirm()
    store.activate(store.install(*parts(make_artifact("kws", 2))))
    store.confirm(hold=True)
    return store


def test_a_staged_model_keeps_the_floor_and_holds_the_previous_slot_until_confirmed(tmp_path, make_artifact, policy):
    store = staged_store(tmp_path, make_artifact, policy, before=make_artifact("ad", 1))
    state = store.state()
    assert (state.active, state.pending, state.confirmed_version, state.held.previous) == ("b", False, 1, "a")
    assert state_file(tmp_path / "s")["held"] == {"previous": "a"}
    with pytest.raises(BadInput, match="cannot confirm model 000000000000: the device runs model"):
        store.confirm_floor("0" * 64)
    assert store.state().held is not None  # a refused confirm changes nothing
    store.confirm_floor(sha(make_artifact("kws", 2)))
    assert (store.state().confirmed_version, store.state().held) == (2, None)
    assert state_file(tmp_path / "s")["held"] is None
    store.confirm_floor(sha(make_artifact("kws", 2)))  # again: nothing to do, no error
    with pytest.raises(BadInput, match="no staged update is held"):
        store.revert(sha(make_artifact("ad", 1)))  # confirmed: the way back is closed
    with pytest.raises(BadInput, match="version 1 is lower than the confirmed version 2"):
        store.install(*parts(make_artifact("ad", 1)))  # an older version is refused now


def test_a_revert_goes_back_to_the_previous_slot_after_its_health_check(tmp_path, make_artifact, policy):
    old = make_artifact("ad", 1)
    store = staged_store(tmp_path, make_artifact, policy, before=old)
    with pytest.raises(BadInput, match="slot a holds model"):
        store.revert(sha(make_artifact("kws", 2)))  # the staged model itself is not the way back
    with pytest.raises(BadInput, match="cannot revert to no model: slot a holds the model from before"):
        store.revert(None)
    back = store.revert(sha(old))
    assert (back.slot, back.pending, back.artifact.version) == ("a", True, 1)
    assert store.state().held.previous == "a" and store.state().fallback == "b"
    store.rollback()  # its health check failed: the staged model again, still held
    assert (store.state().active, store.state().held.previous) == ("b", "a")
    back = store.revert(sha(old))
    store.confirm()  # the health check passed
    state = store.state()
    assert (state.active, state.pending, state.held, state.confirmed_version) == ("a", False, None, 1)
    assert store.active().artifact.sha256 == sha(old)
    # The same revert again (the answer was lost): already there, nothing changes.
    again = store.revert(sha(old))
    assert again.slot == "a" and not again.pending and store.state() == state
    with pytest.raises(BadInput, match="no staged update is held"):
        store.revert(sha(make_artifact("kws", 2)))


def test_a_revert_to_none_only_when_there_was_no_model_before(tmp_path, make_artifact, policy):
    store = staged_store(tmp_path, make_artifact, policy, before=None)
    assert store.state().held.previous is None and store.state().confirmed_version is None
    with pytest.raises(BadInput, match="the device had no model before the staged update"):
        store.revert(sha(make_artifact("kws", 2)))
    assert store.revert(None) is None
    assert store.active() is None and store.state().held is None and not store.state().pending
    assert store.revert(None) is None  # again: already there
    reopened_state = state_file(tmp_path / "s")
    assert (reopened_state["active"], reopened_state["held"]) == (None, None)


def test_a_revert_is_refused_when_the_previous_slot_was_tampered_with(tmp_path, make_artifact, policy):
    old = make_artifact("ad", 1)
    store = staged_store(tmp_path, make_artifact, policy, before=old)
    manifest = tmp_path / "s" / "slots" / "a" / "manifest.json"
    original = manifest.read_bytes()
    manifest.write_bytes(original.replace(b'"version": 1', b'"version": 3'))
    with pytest.raises(BadInput, match="signature does not verify"):
        store.revert(sha(old))
    manifest.write_bytes(original)
    model = tmp_path / "s" / "slots" / "a" / "model.tflite"
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="sha256"):
        store.revert(sha(old))
    assert (store.state().active, store.state().pending, store.state().held.previous) == ("b", False, "a")
    store.close()
    # A key no longer trusted: the revert checks the signature against today's keys, not those of the install.
    model.write_bytes(bytes(data[:100]) + bytes([data[100] ^ 0xFF]) + bytes(data[101:]))
    other = tmp_path / "other-keys"
    generate_keypair(other)
    rotated = InstallPolicy(trusted_keys=(load_public_key(other / "signing.pub"),), require_signature=True,
                            profile=policy.profile, backend=policy.backend)
    store = ModelStore(tmp_path / "s", rotated)
    with pytest.raises(BadInput, match="does not verify with any trusted key"):
        store.revert(sha(old))
    store.close()
    assert ModelStore(tmp_path / "s", policy).revert(sha(old)).slot == "a"  # the original keys: it verifies


def test_a_revert_is_refused_when_the_floor_moved_above_the_previous_model(tmp_path, make_artifact, policy):
    store = staged_store(tmp_path, make_artifact, policy, before=make_artifact("ad", 1))
    store.close()
    state = state_file(tmp_path / "s")
    state["confirmed_version"] = 2  # however the floor got there: a revert never goes below it
    (tmp_path / "s" / "state.json").write_text(json.dumps(state))
    store = ModelStore(tmp_path / "s", policy)
    with pytest.raises(BadInput, match="version 1 is lower than the confirmed version 2"):
        store.revert(sha(make_artifact("ad", 1)))
    assert store.state().active == "b" and not store.state().pending


def test_an_install_over_the_held_slot_ends_the_hold_first(tmp_path, make_artifact, policy):
    store = staged_store(tmp_path, make_artifact, policy, before=make_artifact("ad", 1))
    assert store.install(*parts(make_artifact("kws", 2))) == "b"  # the running model: nothing written, still held
    assert store.state().held is not None
    assert store.install(*parts(make_artifact("ic", 3))) == "a"
    assert store.state().held is None and state_file(tmp_path / "s")["held"] is None
    assert store.state().confirmed_version == 1
    with pytest.raises(BadInput, match="no staged update is held"):
        store.revert(sha(make_artifact("ad", 1)))


def test_the_staged_state_survives_crashes_at_every_step(tmp_path, make_artifact, policy):
    old = make_artifact("ad", 1)
    store = ModelStore(tmp_path / "s", policy)
    store.activate(store.install(*parts(old)))
    store.confirm()
    store.activate(store.install(*parts(make_artifact("kws", 2))))
    store.close()  # dies during the staged model's health check
    store = ModelStore(tmp_path / "s", policy)
    assert store.recovered_from == "b" and store.state() == type(store.state())(active="a", confirmed_version=1)

    store.activate("b")
    store.confirm(hold=True)
    store.close()  # dies while holding: the hold is on disk
    store = ModelStore(tmp_path / "s", policy)
    assert store.recovered_from is None and store.state().held.previous == "a" and store.state().active == "b"

    store.revert(sha(old))
    store.close()  # dies during the revert's health check: back to the staged model, still held
    store = ModelStore(tmp_path / "s", policy)
    state = store.state()
    assert store.recovered_from == "a"
    assert (state.active, state.pending, state.held.previous, state.confirmed_version) == ("b", False, "a", 1)
    store.revert(sha(old))
    store.confirm()
    store.close()
    store = ModelStore(tmp_path / "s", policy)
    assert (store.state().active, store.state().held, store.active().artifact.version) == ("a", None, 1)


def test_a_state_file_of_an_older_agent_loads_and_a_corrupt_hold_is_reported(tmp_path, make_artifact, policy):
    store = ModelStore(tmp_path / "s", policy)
    store.activate(store.install(*parts(make_artifact("kws", 1))))
    store.confirm()
    store.close()
    path = tmp_path / "s" / "state.json"
    path.write_text(json.dumps({"schema": 1, "active": "a", "pending": False, "fallback": None,
                                "confirmed_version": 1}))  # as agents before staged rollouts wrote it
    store = ModelStore(tmp_path / "s", policy)
    assert store.state().held is None and store.active().artifact.version == 1
    store.close()
    for held in ({"previous": "a"}, {"previous": "c"}, ["a"]):  # the active slot itself, no such slot, not an object
        path.write_text(json.dumps({"schema": 1, "active": "a", "pending": False, "fallback": None,
                                    "confirmed_version": 1, "held": held}))
        with pytest.raises(BadInput, match="corrupt store state"):
            ModelStore(tmp_path / "s", policy)
