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
