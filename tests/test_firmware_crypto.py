"""The firmware's crypto (firmware_bridge/firmware/core/crypto): SHA-256, SHA-512 and Ed25519
verification, built with the system C++ compiler (ASan + UBSan) and checked against published
vectors, hashlib and the `cryptography` package; plus one warning-free build for Cortex-M4."""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CRYPTO_DIR = Path(__file__).resolve().parent.parent / "firmware_bridge" / "firmware" / "core" / "crypto"
SOURCES = ["sha256.cc", "sha512.cc", "ed25519.cc"]
WARNINGS = ["-std=c++17", "-Wall", "-Wextra", "-Werror"]
ARM_FLAGS = ["-mthumb", "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-O2",
             "-fno-exceptions", "-fno-rtti", "-fno-threadsafe-statics", "-ffunction-sections",
             "-fdata-sections", "-funsigned-char"]

L = 2**252 + 27742317777372353535851937790883648493  # order of the Ed25519 base point

# FIPS 180-2 / NIST example messages and their digests.
MSG_448 = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
MSG_896 = (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
           b"lmnopqrsmnopqrstnopqrstu")
SHA256_VECTORS = {
    b"abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    b"": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    MSG_448: "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    MSG_896: "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
}
SHA512_VECTORS = {
    b"abc": "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
            "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    b"": "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
         "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    MSG_448: "204a8fc6dda82f0a0ced7beb8e08a41657c16ef468b228a8279be331a703c335"
             "96fd15c13b1b07f9aa1d3bea57789ca031ad85c7a71dd70354ec631238ca3445",
    MSG_896: "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
             "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909",
}
SHA256_MILLION_A = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
SHA512_MILLION_A = ("e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973eb"
                    "de0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e4eadb217ad8cc09b")

# RFC 8032 section 7.1: (secret key, public key, message, signature).
RFC8032_VECTORS = {
    "TEST 1": ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
               "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
               "",
               "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
               "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    "TEST 2": ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
               "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
               "72",
               "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
               "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    "TEST 3": ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
               "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
               "af82",
               "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
               "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    "TEST SHA(abc)": ("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
                      "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
                      SHA512_VECTORS[b"abc"],
                      "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
                      "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"),
}


def _hex(data: bytes) -> str:
    return data.hex() or "-"


def _compiler() -> str:
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no C++ compiler on this machine")


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("crypto") / "test_crypto"
    build = subprocess.run([_compiler(), *WARNINGS, "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                            "-O2", "-g", *(str(CRYPTO_DIR / name) for name in [*SOURCES, "test_crypto.cc"]),
                            "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    return exe


def run_driver(exe: Path, commands: list[str]) -> list[str]:
    """One result line per command (see test_crypto.cc for the commands)."""
    run = subprocess.run([str(exe)], input="\n".join(commands) + "\n", capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    lines = run.stdout.splitlines()
    assert len(lines) == len(commands), run.stdout[-2000:]
    return lines


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_all(exe: Path, cases: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """ed25519_verify for each (signature, message, public key)."""
    out = run_driver(exe, [f"ed25519 {sig.hex()} {pub.hex()} {_hex(msg)}" for sig, msg, pub in cases])
    assert set(out) <= {"0", "1"}, out
    return [line == "1" for line in out]


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- SHA-256 / SHA-512 ----------------------------------------------------------------------------

@pytest.mark.parametrize("algo,vectors,million", [("sha256", SHA256_VECTORS, SHA256_MILLION_A),
                                                  ("sha512", SHA512_VECTORS, SHA512_MILLION_A)])
def test_sha_published_vectors(driver, algo, vectors, million):
    for message, digest in vectors.items():  # the vectors themselves, against Python's hashlib
        assert hashlib.new(algo, message).hexdigest() == digest
    assert hashlib.new(algo, b"a" * 1_000_000).hexdigest() == million
    commands = [f"{algo} {_hex(message)}" for message in vectors]
    commands += [f"{algo}rep 61 1000000",                        # one million 'a', one byte per update
                 f"{algo}rep {(b'a' * 1000).hex()} 1000"]        # and 1000 updates of 1000 bytes
    assert run_driver(driver, commands) == [*vectors.values(), million, million]


@pytest.mark.parametrize("algo,block", [("sha256", 64), ("sha512", 128)])
def test_sha_chunked_updates_equal_one_shot(driver, algo, block):
    rng = random.Random(f"crypto-{algo}")
    # Every length around the padding edges (block - 9 / block - 17 is the last one-block message),
    # then random lengths up to a few blocks.
    lengths = [n for k in (1, 2) for n in range(k * block - 20, k * block + 3)] + [0, 1, 3 * block]
    lengths += [rng.randrange(0, 6 * block) for _ in range(40)]
    commands, expected = [], []
    for n in lengths:
        message = rng.randbytes(n)
        digest = hashlib.new(algo, message).hexdigest()
        commands.append(f"{algo} {_hex(message)}")  # one-shot
        expected.append(digest)
        for _ in range(3):  # random splits, with chunks that straddle and land on block boundaries
            chunks, left = [], n
            while left and len(chunks) < 12:
                size = min(left, rng.choice([0, 1, rng.randrange(1, block), block - 1, block, block + 1,
                                             rng.randrange(1, 3 * block)]))
                chunks.append(size)
                left -= size
            commands.append(f"{algo} {_hex(message)} {','.join(map(str, chunks)) or '0'}")
            expected.append(digest)
    assert run_driver(driver, commands) == expected


# --- Ed25519 ----------------------------------------------------------------------------------------

def test_ed25519_rfc8032_vectors(driver):
    cases = []
    for secret, public, message, signature in RFC8032_VECTORS.values():
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
        assert public_bytes(key).hex() == public  # the vectors themselves, against `cryptography`
        assert key.sign(bytes.fromhex(message)).hex() == signature
        cases.append((bytes.fromhex(signature), bytes.fromhex(message), bytes.fromhex(public)))
    assert verify_all(driver, cases) == [True] * len(cases)
    # Each signature belongs to its own message and key only.
    crossed = [(sig, cases[(i + 1) % len(cases)][1], pub) for i, (sig, _, pub) in enumerate(cases)]
    crossed += [(sig, msg, cases[(i + 1) % len(cases)][2]) for i, (sig, msg, _) in enumerate(cases)]
    assert verify_all(driver, crossed) == [False] * len(crossed)


def test_ed25519_cryptography_signatures_verify(driver):
    rng = random.Random("crypto-ed25519")
    cases = []
    for n in [0, 1, 31, 32, 33, 64, 111, 112, 127, 128, 129, 1000, 5000] + [rng.randrange(0, 300) for _ in range(12)]:
        key = Ed25519PrivateKey.generate()
        message = rng.randbytes(n)
        cases.append((key.sign(message), message, public_bytes(key)))
    assert verify_all(driver, cases) == [True] * len(cases)


def test_ed25519_every_single_bit_flip_is_rejected(driver):
    rng = random.Random("crypto-flips")
    cases = []
    for n in (0, 37):
        key = Ed25519PrivateKey.generate()
        message = rng.randbytes(n)
        sig, pub = key.sign(message), public_bytes(key)
        cases += [(flip(sig, bit), message, pub) for bit in range(512)]
        cases += [(sig, flip(message, bit), pub) for bit in range(8 * n)]
        cases += [(sig, message, flip(pub, bit)) for bit in range(256)]
    accepted = [i for i, ok in enumerate(verify_all(driver, cases)) if ok]
    assert accepted == [], f"{len(accepted)} of {len(cases)} tampered cases verified, e.g. {cases[accepted[0]]}"


def test_ed25519_rejects_s_at_or_above_L(driver):
    key = Ed25519PrivateKey.generate()
    message = b"lepton-edge manifest"
    sig, pub = key.sign(message), public_bytes(key)
    r, s = sig[:32], int.from_bytes(sig[32:], "little")
    assert s < L
    bad_s = [s + L, s + 2 * L, L, L + 1, 2**256 - 1, 2**253]  # s + L is the classic malleated twin
    cases = [(sig, message, pub)] + [(r + value.to_bytes(32, "little"), message, pub) for value in bad_s]
    assert verify_all(driver, cases) == [True] + [False] * len(bad_s)


def _identity_key_signature(seed: bytes) -> bytes:
    """A signature that verifies under the identity point A = (0, 1) for every message.

    With A the identity, [S]B = R + [k]A reduces to [S]B = R. Take R = the public key of `seed`
    (= [a]B, a the clamped scalar of RFC 8032 5.1.5) and S = a mod L.
    """
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    r = public_bytes(Ed25519PrivateKey.from_private_bytes(seed))
    return r + (a % L).to_bytes(32, "little")


def test_ed25519_rejects_non_canonical_public_keys(driver):
    p = 2**255 - 19
    sig = _identity_key_signature(bytes(range(32)))
    identity = (1).to_bytes(32, "little")              # y = 1, x = 0: the canonical encoding
    y_plus_p = (1 + p).to_bytes(32, "little")          # y = 1 + p: the same point, y >= p
    minus_zero = (1 | 1 << 255).to_bytes(32, "little")  # y = 1 with the sign bit set: "x = -0"
    y_equals_p = p.to_bytes(32, "little")              # y = p (= 0 mod p), not canonical
    all_ones = b"\xff" * 32                            # y = 2^255 - 1 >= p
    cases = [(sig, b"any message", identity), (sig, b"", identity),
             (sig, b"any message", y_plus_p), (sig, b"any message", minus_zero),
             (sig, b"any message", y_equals_p), (sig, b"any message", all_ones)]
    assert verify_all(driver, cases) == [True, True, False, False, False, False]


def test_ed25519_rejects_non_canonical_r(driver):
    # R = identity encoded as y = 1 + p: [S]B - [k]A = identity when S = 0 and A = identity.
    p = 2**255 - 19
    identity = (1).to_bytes(32, "little")
    zero_s = bytes(32)
    canonical = (identity + zero_s, b"m", identity)
    cases = [canonical, ((1 + p).to_bytes(32, "little") + zero_s, b"m", identity),
             ((1 | 1 << 255).to_bytes(32, "little") + zero_s, b"m", identity)]
    assert verify_all(driver, cases) == [True, False, False]


# --- Cortex-M4 build ----------------------------------------------------------------------------------

def test_arm_build_is_warning_free_and_needs_no_heap(tmp_path):
    arm = shutil.which("arm-none-eabi-g++")
    if arm is None:
        pytest.skip("arm-none-eabi-g++ is not installed: the Cortex-M4 build of core/crypto is not checked")
    objects = []
    for name in SOURCES:
        obj = tmp_path / name.replace(".cc", ".o")
        build = subprocess.run([arm, *WARNINGS, *ARM_FLAGS, "-c", str(CRYPTO_DIR / name), "-o", str(obj)],
                               capture_output=True, text=True, timeout=300)
        assert build.returncode == 0 and not build.stderr.strip(), build.stderr
        objects.append(obj)
    nm, size, objdump = (shutil.which(f"arm-none-eabi-{tool}") for tool in ("nm", "size", "objdump"))
    if nm is None or size is None or objdump is None:
        return
    undefined = subprocess.run([nm, "-u", *map(str, objects)], capture_output=True, text=True, check=True).stdout
    symbols = {line.split()[-1] for line in undefined.splitlines() if line.strip().startswith("U ")}
    # Only the crypto objects' own cross-references (lepton::...) and the C library's memory primitives.
    foreign = {s for s in symbols if s not in {"memcpy", "memset", "memcmp", "memmove"} and "lepton" not in s}
    assert foreign == set(), f"unexpected external symbols (heap, exceptions, libstdc++?): {sorted(foreign)}"
    table = subprocess.run([size, *map(str, objects)], capture_output=True, text=True, check=True).stdout
    for line in table.splitlines()[1:]:  # text data bss dec hex filename: no writable globals at all
        text, data, bss = map(int, line.split()[:3])
        assert text > 0 and data == 0 and bss == 0, table
    headers = subprocess.run([objdump, "-h", *map(str, objects)], capture_output=True, text=True, check=True).stdout
    assert ".init_array" not in headers and ".ctors" not in headers, headers  # no static constructors
