"""The compact CKKS format (he_wire.py, issue 17 §4): parameters at 128-bit security, upload and download within
4x the float32 plaintext, the aggregate within 1e-4 of the plaintext one relative to the update, and bytes that
are not a ciphertext left for the guard to refuse."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS

from fedgai.config import profile
from fedgai.federated.he_keys import HE_PARAMS, make_contexts
from fedgai.federated.he_wire import (
    PackedCiphertextLoader,
    add_to_plain_global,
    decrypt_packed,
    encrypt_packed,
    packed_size,
)
from fedgai.federated.round import initial_global
from fedgai.federated.server.he_server import ciphertext_problem

# HomomorphicEncryption.org standard, 128-bit classical security, ternary secret: max log2(q) per ring degree.
HE_STANDARD_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@pytest.fixture(scope="module")
def contexts() -> tuple[ts.Context, ts.Context]:
    server, client = make_contexts()
    return ts.context_from(server), ts.context_from(client)


@pytest.fixture(scope="module")
def paper_d() -> dict[str, np.ndarray]:
    """The paper profile's shared D entries: the update whose size the targets are about."""
    return initial_global(profile("paper"))


def test_parameters_are_the_smallest_ring_at_128_bit_security():
    degree, bits = HE_PARAMS["poly_modulus_degree"], HE_PARAMS["coeff_mod_bit_sizes"]
    assert sum(bits) <= HE_STANDARD_128[degree] and sum(bits) > HE_STANDARD_128[degree // 2]
    assert HE_PARAMS["scale_bits"] == bits[1]  # the rescale after 1/total consumes q1 and keeps the scale
    with pytest.raises(ValueError):  # SEAL refuses one bit more than the standard's table at this degree
        ts.context(ts.SCHEME_TYPE.CKKS, degree, coeff_mod_bit_sizes=[bits[0] + 1, *bits[1:]])


def test_round_trip_of_an_odd_count_over_several_ciphertexts(contexts):
    server_ctx, client_ctx = contexts
    values = np.random.default_rng(0).normal(0, 1, 9001)
    data = encrypt_packed(client_ctx, values)
    vector = ts.ckks_vector_from(server_ctx, data)  # the server reads it without any key
    assert vector.size() == packed_size(values.size)
    np.testing.assert_allclose(decrypt_packed(client_ctx, data, values.size), values, atol=1e-7)


def test_seeded_upload_is_half_of_an_unseeded_one(contexts):
    _, client_ctx = contexts
    values = np.random.default_rng(1).normal(0, 0.01, 8192)
    seeded, full = encrypt_packed(client_ctx, values), encrypt_packed(client_ctx, values, seeded=False)
    assert len(seeded) < 0.55 * len(full)


def three_studio_round(client_ctx: ts.Context, server_ctx: ts.Context, global_d: dict[str, np.ndarray]
                       ) -> tuple[list[dict[str, bytes]], dict[str, ts.CKKSVector], dict[str, np.ndarray]]:
    """Three studios' pre-weighted uploads, the server's new global (round 0: plaintext seeded D) and the
    plaintext mean update."""
    rng = np.random.default_rng(2)
    updates = [({k: rng.normal(0, 1e-3, v.shape) for k, v in global_d.items()}, n) for n in (40, 120, 250)]
    uploads = [{k: encrypt_packed(client_ctx, d[k] * n) for k in global_d} for d, n in updates]
    total = sum(n for _, n in updates)
    aggregate = {}
    for key in global_d:
        summed = sum((ts.ckks_vector_from(server_ctx, up[key]) for up in uploads[1:]),
                     ts.ckks_vector_from(server_ctx, uploads[0][key]))
        aggregate[key] = summed * (1.0 / total)
    weights = {k: v.copy() for k, v in global_d.items()}
    assert add_to_plain_global(weights, aggregate, server_ctx)
    mean = {k: sum(d[k] * n for d, n in updates) / total for k in global_d}
    return uploads, weights, mean


def test_paper_update_within_4x_bytes_and_1e_4_relative_error(contexts, paper_d):
    server_ctx, client_ctx = contexts
    uploads, new_global, mean = three_studio_round(client_ctx, server_ctx, paper_d)
    plaintext = sum(v.size * 4 for v in paper_d.values())  # float32
    assert max(sum(map(len, up.values())) for up in uploads) <= 4 * plaintext
    assert sum(len(v.serialize()) for v in new_global.values()) <= 4 * plaintext
    error = np.concatenate([decrypt_packed(client_ctx, new_global[k].serialize(), v.size) - (v + mean[k]).ravel()
                            for k, v in paper_d.items()])
    update = np.concatenate([m.ravel() for m in mean.values()])
    assert np.linalg.norm(error) <= 1e-4 * np.linalg.norm(update)
    assert np.abs(error).max() <= 1e-4 * np.abs(update).max()


def test_later_rounds_add_ciphertexts_with_the_stock_path(contexts):
    server_ctx, client_ctx = contexts
    encrypted = {"w": ts.ckks_vector_from(server_ctx, encrypt_packed(client_ctx, np.ones(5)))}
    assert not add_to_plain_global(encrypted, {"w": encrypted["w"]}, server_ctx)


def test_loader_reads_ciphertexts_and_leaves_anything_else_for_the_guard(contexts):
    server_ctx, client_ctx = contexts
    values = np.arange(6, dtype=np.float32)
    data = {"good": encrypt_packed(client_ctx, values), "junk": b"\x0a\x01\x03not a ciphertext", "plain": values}
    dxo = DXO(DataKind.WEIGHT_DIFF, data=dict(data),
              meta={MetaKey.PROCESSED_ALGORITHM: HE_ALGORITHM_CKKS, MetaKey.NUM_STEPS_CURRENT_ROUND: 8})
    loader = PackedCiphertextLoader()
    loader.tenseal_context = server_ctx
    loaded = from_shareable(loader.process(dxo.to_shareable(), FLContext())).data
    assert isinstance(loaded["good"], ts.CKKSVector) and loaded["good"].size() == packed_size(values.size)
    assert loaded["junk"] == data["junk"] and loaded["plain"] is not None
    problem = ciphertext_problem(loaded, {"good": 3, "junk": 3, "plain": 3})
    assert problem is not None and "not as a CKKS ciphertext" in problem


def test_loader_takes_only_fresh_uploads_at_the_contexts_level_and_scale(contexts):
    server_ctx, client_ctx = contexts
    other_scale = client_ctx.copy()
    other_scale.global_scale = 2 ** 30
    summed = ts.ckks_vector_from(server_ctx, encrypt_packed(client_ctx, np.ones(8))) * 0.5  # one level down
    loader = PackedCiphertextLoader()
    loader.tenseal_context = server_ctx
    for data in (encrypt_packed(other_scale, np.ones(8)), summed.serialize()):
        dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": data}, meta={MetaKey.PROCESSED_ALGORITHM: HE_ALGORITHM_CKKS})
        assert from_shareable(loader.process(dxo.to_shareable(), FLContext())).data["w"] == data
