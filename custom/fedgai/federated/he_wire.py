"""A compact CKKS ciphertext format for aggregation that only adds (issue 17 §4).

The HE job's server only sums pre-weighted updates, multiplies by 1/total pairs once and adds the result to the
global entries: one plaintext multiplication, no relinearisation, no rotation. So the parameters need
- ring degree 4096: the smallest whose 128-bit bound (HomomorphicEncryption.org standard, ternary secret:
  log q <= 27 / 54 / 109 / 218 bits at 1024 / 2048 / 4096 / 8192) holds two data primes that keep the error
  far below 1e-4 of an update (2048 leaves 54 bits: too few for a 2^36+ scale plus the values' range);
- coefficient moduli [50, 40, 19]: q0 (50 bits) holds the global at scale 2^40 with 9 bits of range, q1 (40
  bits) is consumed by the rescale after the 1/total multiplication, and the last prime is SEAL's special
  prime, only used for key switching, which this aggregation never does, so it can be small (19 bits);
  109 bits in all, the table's bound, which SEAL itself enforces (``SEC_LEVEL_TYPE.TC128``);
- two real values per complex slot: CKKS slots are complex and every server operation here (add, multiply
  by a real) acts on real and imaginary parts alike, so packing halves the ciphertexts (TenSEAL's
  CKKSVector only fills the real parts);
- seeded symmetric encryption for uploads: a studio holds the secret key (NVFlare's HEBuilder makes
  symmetric contexts: the server's holds no secret or public key), so it sends the seed of the uniform half of each
  ciphertext instead of the half itself (SEAL expands it on load; TenSEAL's own symmetric encryption
  expands it before serialising). Downloads are sums, which have no seed;
- SEAL's own compression (zstd) of each ciphertext, which drops the unused high bits of every 64-bit word.

The bytes are a TenSEAL CKKSVector serialisation (``ts.ckks_vector_from`` reads them; the server adds and
scales them as CKKSVectors), so NVFlare's aggregation is unchanged; only the studio packs and unpacks. They
travel as plain bytes, without the context NVFlare's CKKSVector decomposer attaches to every vector;
``PackedCiphertextLoader`` turns them into CKKSVectors under the server's context. TenSEAL exposes neither
complex encoding nor seeded encryption, so this module uses its SEAL bindings (``tenseal.sealapi``), which
read and write through files only (a private temporary folder, removed at once; the studio's key is
already a file in its startup kit).

Parameters: ``he_keys.HE_PARAMS``; measured against the other settings tried by benchmarks/he_cost.py
(docs/benchmarks.md).
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal
from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_opt.he.homomorphic_encrypt import load_tenseal_context_from_workspace

from fedgai.federated.he_keys import SERVER_CONTEXT


class SealSide:
    """The SEAL objects behind a TenSEAL context (same parameters, same keys), for packing and seeding."""

    def __init__(self, context: ts.Context, folder: Path):
        self.folder = folder
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        degree = context.seal_context().data.first_context_data().parms().poly_modulus_degree()
        bits = [m.bit_count() for m in context.seal_context().data.key_context_data().parms().coeff_modulus()]
        parms.set_poly_modulus_degree(degree)
        # CoeffModulus.Create is deterministic: the same primes as TenSEAL's (a key of other primes fails to load).
        parms.set_coeff_modulus(seal.CoeffModulus.Create(degree, bits))
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        self.encoder = seal.CKKSEncoder(self.context)
        self.evaluator = seal.Evaluator(self.context)
        self.scale = context.global_scale
        self.encryptor = self.decryptor = None
        if context.has_secret_key():
            path = str(folder / "key")
            context.secret_key().data.save(path)
            key = seal.SecretKey()
            key.load(self.context, path)
            self.encryptor, self.decryptor = seal.Encryptor(self.context, key), seal.Decryptor(self.context, key)

    def encrypt(self, chunk: np.ndarray, seeded: bool) -> bytes:
        """One ciphertext of complex ``chunk`` under the secret key; ``seeded``: its uniform half as a seed."""
        if self.encryptor is None:
            raise ValueError("this context has no secret key: it cannot encrypt")
        plain = seal.Plaintext()
        self.encoder.encode(chunk.tolist(), self.scale, plain)
        if seeded:
            return self._bytes(self.encryptor.encrypt_symmetric(plain))
        ciphertext = seal.Ciphertext()
        self.encryptor.encrypt_symmetric(plain, ciphertext)
        return self._bytes(ciphertext)

    def decrypt(self, data: bytes) -> np.ndarray:
        """The complex slots of one SEAL-serialised ciphertext."""
        if self.decryptor is None:
            raise ValueError("this context has no secret key: it cannot decrypt")
        plain = seal.Plaintext()
        self.decryptor.decrypt(self._ciphertext(data), plain)
        return np.asarray(self.encoder.decode_complex(plain))

    def add_plain(self, data: bytes, chunk: np.ndarray) -> bytes:
        """One ciphertext plus complex ``chunk`` in clear, at the ciphertext's level and scale (no key needed)."""
        ciphertext, plain = self._ciphertext(data), seal.Plaintext()
        self.encoder.encode(chunk.tolist(), ciphertext.parms_id(), ciphertext.scale, plain)
        self.evaluator.add_plain_inplace(ciphertext, plain)
        return self._bytes(ciphertext)

    def _ciphertext(self, data: bytes) -> seal.Ciphertext:
        path = self.folder / "ct"
        path.write_bytes(data)
        ciphertext = seal.Ciphertext()
        ciphertext.load(self.context, str(path))
        return ciphertext

    def _bytes(self, ciphertext: Any) -> bytes:
        path = self.folder / "ct"
        ciphertext.save(str(path))  # SEAL's default compression (zstd)
        return path.read_bytes()


def packed_size(values: int) -> int:
    """Complex slots (TenSEAL's CKKSVector.size()) holding ``values`` reals."""
    return (values + 1) // 2


def complex_slots(values: np.ndarray) -> np.ndarray:
    """Two reals per complex slot (a trailing zero for an odd count)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size % 2:
        flat = np.append(flat, 0.0)
    return flat[0::2] + 1j * flat[1::2]


def encrypt_packed(context: ts.Context, values: np.ndarray, seeded: bool = True) -> bytes:
    """``values`` (any shape) as a serialised CKKSVector, two reals per slot, encrypted with ``context``'s secret
    key (a studio's); ``seeded``: each ciphertext's uniform half travels as its seed (half the bytes)."""
    slots = complex_slots(values)
    with tempfile.TemporaryDirectory() as folder:
        side = SealSide(context, Path(folder))
        step = side.encoder.slot_count()
        chunks = [slots[i:i + step] for i in range(0, slots.size, step)]
        return vector_bytes([c.size for c in chunks], [side.encrypt(c, seeded) for c in chunks], side.scale)


def decrypt_packed(context: ts.Context, data: bytes, values: int) -> np.ndarray:
    """The ``values`` reals of a packed CKKSVector serialisation (``context`` must hold the secret key)."""
    sizes, ciphertexts, _ = parse_vector_bytes(data)
    with tempfile.TemporaryDirectory() as folder:
        side = SealSide(context, Path(folder))
        slots = np.concatenate([side.decrypt(ct)[:size] for size, ct in zip(sizes, ciphertexts, strict=True)])
    return np.stack([slots.real, slots.imag], axis=1).ravel()[:values]


def add_packed_plain(context: ts.Context, vector: ts.CKKSVector, values: np.ndarray) -> ts.CKKSVector:
    """``vector`` (packed) plus ``values`` in clear, packed alike; any context of the parameters will do."""
    sizes, ciphertexts, scale = parse_vector_bytes(vector.serialize())
    slots = complex_slots(values)
    if slots.size != sum(sizes):
        raise ValueError(f"{slots.size} slots of values against a ciphertext of {sum(sizes)}")
    bounds = np.cumsum([0, *sizes])
    with tempfile.TemporaryDirectory() as folder:
        side = SealSide(context, Path(folder))
        summed = [side.add_plain(ct, slots[a:b]) for ct, a, b in zip(ciphertexts, bounds[:-1], bounds[1:], strict=True)]
    return ts.ckks_vector_from(context, vector_bytes(sizes, summed, scale))


def add_to_plain_global(weights: dict[str, Any], aggregate: Mapping[str, Any], context: ts.Context) -> bool:
    """Add the packed aggregate to a global that holds plaintext entries (round 0's seeded D), in place; False,
    and nothing done, when every entry is already encrypted (then NVFlare's stock ciphertext addition applies).
    TenSEAL can only add a plaintext of one real per slot, so packed plaintexts are added through SEAL."""
    if not any(isinstance(value, np.ndarray) for value in weights.values()):
        return False
    for key, value in aggregate.items():
        base = weights[key]
        weights[key] = add_packed_plain(context, value, base) if isinstance(base, np.ndarray) else value + base
    return True


class PackedCiphertextLoader(Filter):
    """Server-side task-result filter, before the guard: each entry that arrived as bytes and reads as a
    CKKSVector under the server's context becomes that CKKSVector (SEAL expands a seeded ciphertext as it
    loads, checking it against the parameters). Only a fresh upload is taken: two polynomials at the first
    data level and the context's scale, since a studio sending another level or scale would make the
    server's sum throw and fail the round for everyone. Anything else passes unchanged, for the guard to
    refuse and record."""

    def __init__(self, tenseal_context_file: str = SERVER_CONTEXT):
        super().__init__()
        self.tenseal_context_file = tenseal_context_file
        self.tenseal_context: ts.Context | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.tenseal_context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        dxo = from_shareable(shareable)
        if isinstance(dxo.data, dict):
            dxo.data = {key: self._load(value) for key, value in dxo.data.items()}
        return dxo.update_shareable(shareable)

    def _load(self, value: Any) -> Any:
        if not isinstance(value, bytes):
            return value
        try:
            vector = ts.ckks_vector_from(self.tenseal_context, value)
        except (ValueError, RuntimeError, TypeError):  # not a ciphertext for these parameters: the guard says so
            return value
        return vector if is_fresh_upload(vector, self.tenseal_context) else value


def is_fresh_upload(vector: ts.CKKSVector, context: ts.Context) -> bool:
    """Whether every ciphertext of ``vector`` is as a studio's encryption leaves it: two polynomials at the
    first data level, at the context's scale."""
    primes = len(context.seal_context().data.first_context_data().parms().coeff_modulus())
    return all(ct.size() == 2 and ct.coeff_modulus_size() == primes and ct.scale == context.global_scale
               for ct in vector.ciphertext())


# TenSEAL's CKKSVectorProto: 1 = repeated uint32 sizes (packed), 2 = repeated bytes ciphertexts, 3 = double scale.
def vector_bytes(sizes: list[int], ciphertexts: list[bytes], scale: float) -> bytes:
    """Serialise chunks as TenSEAL's CKKSVectorProto, so ``ts.ckks_vector_from`` reads them."""
    packed = b"".join(_varint(s) for s in sizes)
    out = b"\x0a" + _varint(len(packed)) + packed
    out += b"".join(b"\x12" + _varint(len(ct)) + ct for ct in ciphertexts)
    return out + b"\x19" + struct.pack("<d", scale)


def parse_vector_bytes(data: bytes) -> tuple[list[int], list[bytes], float]:
    """(sizes, ciphertexts, scale) of a CKKSVectorProto."""
    sizes: list[int] = []
    ciphertexts: list[bytes] = []
    scale, pos = 0.0, 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        if tag == 0x19:
            scale, pos = struct.unpack_from("<d", data, pos)[0], pos + 8
            continue
        length, pos = _read_varint(data, pos)
        field, pos = data[pos:pos + length], pos + length
        if tag == 0x0A:
            sizes.extend(_read_varints(field))
        elif tag == 0x12:
            ciphertexts.append(field)
        else:
            raise ValueError(f"unexpected field tag {tag} in a CKKSVector serialisation")
    return sizes, ciphertexts, scale


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _read_varints(field: bytes) -> list[int]:
    values, pos = [], 0
    while pos < len(field):
        value, pos = _read_varint(field, pos)
        values.append(value)
    return values
