"""The fast Tucker path against tensorly (factors, cores, HOOI, stopping rule), the layouts, and the rank syntax."""

from __future__ import annotations

import pytest
import torch

from toolbox.config.choices import format_ranks, parse_ranks
from toolbox.errors import UsageError
from toolbox.tucker import check_ranks, mode_dot, project, recompose, relative_error, tucker


def low_rank_tensor(shape: tuple[int, ...], ranks: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    core = torch.randn(ranks, generator=generator, dtype=torch.float64)
    factors = [
        torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float64))[0] for n, r in zip(shape, ranks)
    ]
    return recompose(core, factors)


@pytest.mark.parametrize("ranks", ["BATCH_SIZE,32,8,8", "BATCH_SIZE,24,8,8", "BATCH_SIZE,16,8,8", "BATCH_SIZE,8,8,8"])
def test_reconstruction_error_matches_tensorly_for_the_studys_ranks(ranks: str) -> None:
    """One truncated mode: HOSVD is optimal, so both must reach the same error."""
    x = torch.randn(32, 64, 8, 8, generator=torch.Generator().manual_seed(1))
    core, factors = tucker(x, parse_ranks(ranks))
    ref_core, ref_factors = tucker(x, parse_ranks(ranks), backend="tensorly")
    assert relative_error(x, recompose(core, factors)) == pytest.approx(
        relative_error(x, recompose(ref_core, ref_factors)), abs=1e-5
    )
    assert core.shape == ref_core.shape


def assert_same_factors(factors: list, reference: list) -> None:
    """Equal up to the sign of each column (eigenvectors and singular vectors may differ in sign)."""
    for factor, expected in zip(factors, reference):
        assert factor.shape == expected.shape
        signs = torch.sign((factor * expected).sum(dim=0))
        assert torch.allclose(factor * signs, expected, atol=1e-8)


@pytest.mark.parametrize("ranks", ["BATCH_SIZE,16,4,8", "20,16,6,5", "BATCH_SIZE,24,8,8"])
@pytest.mark.parametrize("n_iter", [0, 1, 2, 100])
def test_factors_and_core_are_tensorlys_whatever_the_sweeps(ranks: str, n_iter: int) -> None:
    """Every factor, full-rank ones included, is tensorly's up to column signs: the SVD
    initialisation, HOOI sweeps in tensorly's order and its stopping rule (at most ``n_iter``
    sweeps, as its n_iter_max), and the full-rank factors of its last sweep."""
    x = torch.randn(16, 32, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    core, factors = tucker(x, parse_ranks(ranks), n_iter=n_iter)
    ref_core, ref_factors = tucker(x, parse_ranks(ranks), backend="tensorly", n_iter=n_iter)
    assert_same_factors(factors, ref_factors)
    signs = [torch.sign((f * r).sum(dim=0)) for f, r in zip(factors, ref_factors)]
    assert torch.allclose(project(core, [torch.diag(s) for s in signs]), ref_core, atol=1e-8)


def test_hooi_stops_where_tensorly_stops() -> None:
    """tensorly's rule stops these ranks after 8 sweeps; one sweep fewer moves the factors by more
    than the tolerance of the comparison above, so matching it tests the stopping sweep."""
    import tensorly as tl
    from tensorly.decomposition import tucker as tensorly_tucker

    x = torch.randn(16, 32, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with tl.backend_context("pytorch"):
        _, errors = tensorly_tucker(x, rank=[16, 16, 4, 8], return_errors=True)
    assert len(errors) == 8
    converged = tucker(x, parse_ranks("BATCH_SIZE,16,4,8"))[1]
    early = tucker(x, parse_ranks("BATCH_SIZE,16,4,8"), n_iter=7)[1]
    assert not torch.allclose(early[1].abs(), converged[1].abs(), atol=1e-6)


def test_exact_recovery_of_a_low_rank_tensor() -> None:
    x = low_rank_tensor((32, 64, 8, 8), (32, 12, 5, 8))
    for core_kind in ("original", "per_sample"):
        core, factors = tucker(x, parse_ranks("BATCH_SIZE,12,5,8"), core=core_kind)
        assert relative_error(x, recompose(core, factors)) < 1e-10
        assert torch.allclose(project(x, factors), core)


def test_factors_are_orthonormal_and_per_sample_skips_full_rank_modes() -> None:
    x = torch.randn(16, 64, 8, 8, dtype=torch.float64)
    ranks = parse_ranks("BATCH_SIZE,24,6,8")
    _, per_sample = tucker(x, ranks, core="per_sample")
    assert per_sample[0] is None and per_sample[3] is None  # batch and width kept whole: no work, no rotation
    core, original = tucker(x, ranks)
    assert core.shape == (16, 24, 6, 8)
    for factor, rank in zip(original, (16, 24, 6, 8)):
        assert factor.shape[1] == rank
        assert torch.allclose(factor.T @ factor, torch.eye(rank, dtype=torch.float64), atol=1e-10)
    assert_same_factors(per_sample[1:3], original[1:3])  # the truncated factors do not depend on it


def test_per_sample_core_keeps_samples_apart_where_the_original_rotates_them() -> None:
    x = torch.randn(8, 64, 8, 8, dtype=torch.float64)
    ranks = parse_ranks("BATCH_SIZE,16,8,8")
    core, factors = tucker(x, ranks, core="per_sample")
    assert torch.allclose(core[3], project(x[3:4], factors)[0])  # one sample's core depends on it alone
    original, rotated = tucker(x, ranks)
    assert torch.allclose(original, project(core, [rotated[0], None, *rotated[2:]]))  # the same core, rotated


def test_per_sample_core_with_tensorly_is_a_usage_error_naming_both_flags() -> None:
    with pytest.raises(UsageError, match="--tucker_core per_sample needs --tucker_backend fast"):
        tucker(torch.randn(4, 64, 8, 8), parse_ranks("BATCH_SIZE,16,8,8"), backend="tensorly", core="per_sample")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_mode_products_match_einsum_and_keep_the_layout(layout: torch.memory_format) -> None:
    x = torch.randn(6, 5, 4, 3, dtype=torch.float64).contiguous(memory_format=layout)
    matrices = [torch.randn(n + 1, n, dtype=torch.float64) for n in x.shape]
    expected = torch.einsum("abcd,ia,jb,kc,ld->ijkl", x, *matrices)
    result = x
    for mode, matrix in enumerate(matrices):
        result = mode_dot(result, matrix, mode)
    assert torch.allclose(result, expected)
    assert mode_dot(x, matrices[0], 0).is_contiguous(memory_format=layout)


def test_half_precision_input_is_decomposed_in_float32() -> None:
    x = torch.randn(16, 64, 8, 8).to(torch.bfloat16)
    core, factors = tucker(x, parse_ranks("BATCH_SIZE,16,8,8"))
    assert core.dtype == torch.float32 and factors[1].dtype == torch.float32


def test_last_smaller_batch_works_with_the_batch_token_and_caps_a_numeric_batch_rank() -> None:
    x = torch.randn(5, 64, 8, 8)
    assert tucker(x, parse_ranks("BATCH_SIZE,32,8,8"))[0].shape == (5, 32, 8, 8)
    assert tucker(x, parse_ranks("16,32,8,8"))[0].shape == (5, 32, 8, 8)


def test_parse_and_format_ranks_round_trip() -> None:
    assert parse_ranks("BATCH_SIZE,32,8,8") == (None, 32, 8, 8)
    assert parse_ranks(" 128, 16 ,4,4") == (128, 16, 4, 4)
    assert format_ranks(parse_ranks("BATCH_SIZE,8,8,8")) == "BATCH_SIZE,8,8,8"


@pytest.mark.parametrize(
    "text, message",
    [
        ("BATCH_SIZE,32,8", "needs 4 comma-separated ranks"),
        ("BATCH_SIZE,32,8,8,8", "needs 4 comma-separated ranks"),
        ("BATCH_SIZE,0,8,8", "channel rank must be at least 1"),
        ("BATCH_SIZE,-3,8,8", "channel rank must be at least 1"),
        ("BATCH_SIZE,x,8,8", "a relative channel rank is x followed by a fraction"),
        ("BATCH_SIZE,y,8,8", "channel rank must be a positive integer or a fraction x0.5"),
        ("batch,32,8,8", "batch rank must be BATCH_SIZE or a positive integer"),
        ("BATCH_SIZE,BATCH_SIZE,8,8", "channel rank must be a positive integer"),
        ("", "needs 4 comma-separated ranks"),
    ],
)
def test_malformed_ranks_are_clear_errors_naming_the_flag(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as error:
        parse_ranks(text)
    assert str(error.value).startswith("--ranks")


def test_rank_larger_than_its_mode_is_an_error() -> None:
    with pytest.raises(UsageError, match="--ranks: the channel rank 80 exceeds the feature map's channel size 64"):
        check_ranks(parse_ranks("BATCH_SIZE,80,8,8"), (64, 8, 8))
    with pytest.raises(UsageError, match="height rank 9 exceeds"):
        tucker(torch.randn(4, 64, 8, 8), parse_ranks("BATCH_SIZE,32,9,8"))
