"""Label colours of the sample labeling configs (demo, end-to-end suites, README, docs/labeling.md).

Label Studio's default colours drew CamVid's building, pavement, tree, car and fence in near-identical
greens (issue #32). Each label gets ``background="#rrggbb"`` in config order, across all tags of a
config, from a colour-blind-safe qualitative list that stays readable over photographs: the
Okabe-Ito palette (Okabe & Ito 2008, without its black) for the first seven labels, then Paul Tol's
"muted" scheme (without the colours close to Okabe-Ito's) for the next five.
"""

from __future__ import annotations

__all__ = ["PALETTE", "colour", "label"]

PALETTE: tuple[str, ...] = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#882255",  # wine (Tol muted)
    "#999933",  # olive (Tol muted)
    "#332288",  # indigo (Tol muted)
    "#CC6677",  # rose (Tol muted)
    "#117733",  # green (Tol muted)
)


def colour(index: int) -> str:
    """The colour of the ``index``-th label of a config (cycles after 12)."""
    return PALETTE[index % len(PALETTE)]


def label(value: str, index: int) -> str:
    """``<Label value="..." background="#rrggbb"/>`` for the ``index``-th label of a config."""
    return f'<Label value="{value}" background="{colour(index)}"/>'
