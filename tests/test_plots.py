"""Report plots: what a reader must be able to see."""

import cv2
import numpy as np

from andon.evaluation import plots


def _title_width_px(title: str) -> float:
    fig = plots._figure(10, 2)
    text = fig.suptitle(title)
    return text.get_window_extent(fig.canvas.get_renderer()).width


def test_mistake_grid_title_is_not_cut_off_over_a_single_image(tmp_path):
    # a run with one test mistake gives a one-image grid; its title used to be wider than the figure
    title = "most confident mistakes on test"
    out = plots.plot_image_grid(
        [np.full((64, 64, 3), 120, np.uint8)], ["ok -> break (1.00)"], tmp_path / "grid.png", title=title
    )
    width = cv2.imread(str(out)).shape[1]
    assert width >= _title_width_px(title)


def test_empty_mistake_grid_keeps_its_title_whole(tmp_path):
    out = plots.plot_image_grid([], [], tmp_path / "grid.png", title="most confident mistakes on test")
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] >= _title_width_px("most confident mistakes on test")
