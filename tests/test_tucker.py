"""The fast Tucker path against tensorly, and the rank syntax."""

from __future__ import annotations

import pytest
import torch

from toolbox.errors import UsageError
from toolbox.tucker import check_ranks, format_ranks, parse_ranks, project, recompose, relative_error, tucker


def low_rank_tensor(shape: tuple[int, ...], ranks: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    core = torch.randn(ranks, generator=generator, dtype=torch.float64)
    factors = [torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float64))[0] for n, r in zip(shape, ranks)]
    return recompose(core, factors)


@pytest.mark.parametrize("ranks", ["BATCH_SIZE,32,8,8", "BATCH_SIZE,24,8,8", "BATCH_SIZE,16,8,8", "BATCH_SIZE,8,8,8"])
def test_reconstruction_error_matches_tensorly_for_the_studys_ranks(ranks: str) -> None:
    """One truncated mode: HOSVD is optimal, so both must reach the same error."""
    x = torch.randn(32, 64, 8, 8, generator=torch.Generator().manual_seed(1))
    core, factors = tucker(x, parse_ranks(ranks))
    ref_core, ref_factors = tucker(x, parse_ranks(ranks), backend="tensorly")
    assert relative_error(x, recompose(core, factors)) == pytest.approx(relative_error(x, recompose(ref_core, ref_factors)), abs=1e-5)
    assert core.shape == ref_core.shape


@pytest.mark.parametrize("ranks", ["BATCH_SIZE,16,4,8", "20,16,6,5"])
def test_hooi_refinement_is_at_least_as_good_as_tensorly_with_several_truncated_modes(ranks: str) -> None:
    """Several truncated modes: tensorly stops HOOI at its tolerance, ours runs the sweeps asked for."""
    x = torch.randn(16, 32, 8, 8, generator=torch.Generator().manual_seed(2))
    ref_core, ref_factors = tucker(x, parse_ranks(ranks), backend="tensorly")
    reference = relative_error(x, recompose(ref_core, ref_factors))
    hosvd = relative_error(x, recompose(*tucker(x, parse_ranks(ranks))))
    refined = relative_error(x, recompose(*tucker(x, parse_ranks(ranks), n_iter=25)))
    assert refined <= hosvd + 1e-7
    assert refined <= reference + 1e-5


def test_exact_recovery_of_a_low_rank_tensor() -> None:
    x = low_rank_tensor((32, 64, 8, 8), (32, 12, 5, 8))
    core, factors = tucker(x, parse_ranks("BATCH_SIZE,12,5,8"))
    assert relative_error(x, recompose(core, factors)) < 1e-10
    assert torch.allclose(project(x, factors), core)


def test_factors_are_orthonormal_and_full_rank_modes_skipped() -> None:
    x = torch.randn(16, 64, 8, 8, dtype=torch.float64)
    core, factors = tucker(x, parse_ranks("BATCH_SIZE,24,6,8"), n_iter=3)
    assert factors[0] is None and factors[3] is None  # batch and width kept whole: no work, no rotation
    for factor, rank in ((factors[1], 24), (factors[2], 6)):
        assert factor.shape[1] == rank
        assert torch.allclose(factor.T @ factor, torch.eye(rank, dtype=torch.float64), atol=1e-10)
    assert core.shape == (16, 24, 6, 8)


def test_fast_path_keeps_samples_apart_where_tensorly_rotates_them() -> None:
    """The documented difference: tensorly returns a full batch rotation, the fast path none."""
    x = torch.randn(8, 64, 8, 8, dtype=torch.float64)
    _, reference_factors = tucker(x, parse_ranks("BATCH_SIZE,16,8,8"), backend="tensorly")
    assert reference_factors[0].shape == (8, 8)
    core, factors = tucker(x, parse_ranks("BATCH_SIZE,16,8,8"))
    assert torch.allclose(core[3], project(x[3:4], factors)[0])  # one sample's core depends on it alone


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
        ("BATCH_SIZE,x,8,8", "channel rank must be a positive integer"),
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
