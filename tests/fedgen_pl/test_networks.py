"""The networks: the domain-conditional generator's conditioning modes (concat, film, film_output)."""


import pytest
import torch

from fedgen_pl.label_related import invariance_loss
from fedgen_pl.networks import DomainDCGANGenerator


@torch.no_grad()
def test_film_conditioning_can_draw_the_inverse_domain_with_every_weight_shared():
    torch.manual_seed(0)
    generator = DomainDCGANGenerator(8, (1, 8, 8), num_domains=2, channels=4, conditioning="film")
    z = torch.randn(5, 8)
    paired_z, codes = z.repeat(2, 1), torch.arange(2).repeat_interleave(5)
    images = generator(paired_z, codes).view(2, 5, -1)
    torch.testing.assert_close(images[0], images[1])             # gains start at 1, shifts at 0
    assert float(invariance_loss(generator(paired_z, codes, first_layer=True).view(2, 5, -1))) < 1e-5
    generator.shifts["0"][1] += 1.0                              # domain 1's first-layer shift moves G1
    first = generator(paired_z, codes, first_layer=True).view(2, 5, -1)
    assert float(invariance_loss(first)) == pytest.approx(32 ** 0.5, rel=1e-5)  # 8 channels x 2x2, each off by 1
    generator.shifts["0"][1] -= 1.0
    generator.gains["2"][1] = -1.0                               # domain 1: the output's sign flipped
    images = generator(paired_z, codes).view(2, 5, -1)
    torch.testing.assert_close(images[1], -images[0])            # the inverse image from the same z


@torch.no_grad()
def test_film_output_conditioning_shares_every_layer_but_the_output():
    torch.manual_seed(0)
    generator = DomainDCGANGenerator(8, (1, 8, 8), num_domains=2, channels=4, conditioning="film_output")
    assert sorted(name for name, _ in generator.named_parameters() if "gains" in name or "shifts" in name) == \
        ["gains.2", "shifts.2"]
    z = torch.randn(5, 8)
    paired_z, codes = z.repeat(2, 1), torch.arange(2).repeat_interleave(5)
    generator.gains["2"][1] = -1.0
    generator.shifts["2"][1] = 0.5
    first = generator(paired_z, codes, first_layer=True).view(2, 5, -1)
    assert float(invariance_loss(first)) < 1e-5                     # G1 never sees the code
    images = generator(paired_z, codes).view(2, 5, -1)
    torch.testing.assert_close(images[1], torch.tanh(0.5 - torch.atanh(images[0])), atol=1e-4, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("conditioning", ["film", "film_output"])
def test_zero_output_gain_starts_every_domain_at_the_shift_alone(conditioning):
    generator = DomainDCGANGenerator(8, (1, 8, 8), num_domains=2, channels=4, conditioning=conditioning,
                                     output_gain_init=0.0)
    assert float(generator.gains["2"].abs().max()) == 0.0
    assert all(float((gain - 1).abs().max()) == 0.0 for name, gain in generator.gains.items() if name != "2")
    generator.shifts["2"][1] = 0.5
    images = generator(torch.randn(3, 8).repeat(2, 1), torch.arange(2).repeat_interleave(3)).view(2, 3, -1)
    torch.testing.assert_close(images[0], torch.zeros_like(images[0]))        # tanh(0 * h + 0)
    torch.testing.assert_close(images[1], torch.full_like(images[1], float(torch.tanh(torch.tensor(0.5)))))


def test_unknown_domain_conditioning_fails_loudly():
    with pytest.raises(ValueError, match="model.domain_conditioning"):
        DomainDCGANGenerator(8, (1, 8, 8), num_domains=2, conditioning="bilinear")
