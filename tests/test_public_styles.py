"""Public line styles for the prior: many distinct styles, none of them a demo studio's (issue 27 §1)."""

from __future__ import annotations

import numpy as np
import pytest

from fedgai.data.public_styles import (
    FORBIDDEN_ELEMENTS,
    PUBLIC_FAMILIES,
    LineStyle,
    public_photo,
    public_style,
    render_line_style,
)
from fedgai.data.sketch_styles import DEMO_STYLES
from fedgai.prior import PRIOR_STREAM


def test_public_families_are_disjoint_from_every_demo_studio_style():
    """Otherwise the prior would already hold the studios' styles and a measured gain would be the prior's."""
    assert not set(PUBLIC_FAMILIES) & set(DEMO_STYLES)
    for family in PUBLIC_FAMILIES:
        assert not any(element in family for element in FORBIDDEN_ELEMENTS)
    assert set(DEMO_STYLES) <= set(FORBIDDEN_ELEMENTS)
    draws = {public_style(i).family for i in range(300)}
    assert draws == set(PUBLIC_FAMILIES)


def test_hundreds_of_distinct_seeded_styles():
    styles = [public_style(i) for i in range(300)]
    assert len({tuple(s.to_dict().values()) for s in styles}) == 300
    assert public_style(7) == public_style(7)
    widths = np.array([s.width for s in styles])
    assert (widths == 0).mean() > 0.2 and widths.max() > 3  # thin detector lines and broad strokes both drawn


@pytest.mark.parametrize("family", PUBLIC_FAMILIES)
def test_each_family_draws_lines_not_fills(family):
    photo = np.asarray(public_photo(PRIOR_STREAM, 3, 96))
    style = LineStyle(family=family, scale=1.0, threshold={"xdog": 0.1}.get(family, 0.88), width=1.0, jitter=1.0,
                      pressure=1.0, smoothing=0.5)
    sketch = render_line_style(photo, style, np.random.default_rng(0))
    assert sketch.shape == photo.shape[:2] and sketch.dtype == np.uint8
    ink = (sketch < 128).mean()
    assert 0.005 < ink < 0.35, f"{family}: ink coverage {ink:.3f} is not a line drawing"
    again = render_line_style(photo, style, np.random.default_rng(0))
    assert np.array_equal(sketch, again)


def test_pressure_sets_the_darkest_ink():
    photo = np.asarray(public_photo(PRIOR_STREAM, 1, 64))
    light = LineStyle("sobel", 1.0, 0.85, 0.0, 0.0, pressure=0.5, smoothing=0.0)
    sketch = render_line_style(photo, light, np.random.default_rng(0))
    assert sketch.min() == pytest.approx(255 * 0.5, abs=1)


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown public line family"):
        render_line_style(np.zeros((64, 64, 3), np.uint8), LineStyle("hatching", 1, 0.5, 0, 0, 1, 0),
                          np.random.default_rng(0))
