import pytest
import torch

from megaseqpe.positions import digits_needed, to_digits


def test_123_with_five_digits():
    digits, mask = to_digits(torch.tensor([[123]]), max_digits=5)
    assert digits.tolist() == [[0, 0, 1, 2, 3]]
    assert mask.tolist() == [[0, 0, 1, 1, 1]]


def test_two_dimensions_concatenate_per_dimension_strings():
    digits, mask = to_digits(torch.tensor([[2, 3]]), max_digits=2)
    assert digits.tolist() == [[0, 2, 0, 3]]
    assert mask.tolist() == [[0, 1, 0, 1]]


def test_zero_keeps_its_last_digit_significant():
    digits, mask = to_digits(torch.tensor([[0]]), max_digits=3)
    assert digits.tolist() == [[0, 0, 0]] and mask.tolist() == [[0, 0, 1]]


@pytest.mark.parametrize("base", [2, 16])
def test_other_bases_match_python_formatting(base):
    values = torch.tensor([0, 1, 5, 10, 255, 1000]).unsqueeze(-1)
    width = digits_needed(1001, base)
    digits, _ = to_digits(values, width, base=base)
    for value, row in zip(values[:, 0].tolist(), digits.tolist()):
        text = format(value, "b" if base == 2 else "x").rjust(width, "0")
        assert row == [int(ch, base) for ch in text]


def test_batched_shapes_and_vectorised_on_any_leading_dims():
    positions = torch.randint(0, 999, (3, 7, 2))
    digits, mask = to_digits(positions, 3)
    assert digits.shape == (3, 7, 6) and mask.shape == (3, 7, 6)
    assert torch.equal(digits[..., :3] @ torch.tensor([100, 10, 1]), positions[..., 0])


def test_digits_needed_follows_the_largest_encodable_position():
    assert digits_needed(20000) == 5  # the reference: 0..19999
    assert digits_needed(10) == 1 and digits_needed(11) == 2
    assert digits_needed(256, base=2) == 8 and digits_needed(257, base=2) == 9


def test_overflow_names_the_position_and_the_limit():
    with pytest.raises(ValueError, match=r"position \(100000,\).*5 base-10 digits.*0\.\.99999"):
        to_digits(torch.tensor([[7], [100000]]), 5)
    with pytest.raises(ValueError, match=r"position \(3, 16\)"):
        to_digits(torch.tensor([[3, 16]]), 1, base=16)
    with pytest.raises(ValueError, match="position"):
        to_digits(torch.tensor([[-1]]), 5)
