"""Pictures explain themselves: the reconstruction grid titles its columns."""

import torch
from helpers import tiny_tree

from maskkit.builder import build_model
from maskkit.data.fashion_mnist import FashionMNIST
from maskkit.evaluate import eval_loader
from maskkit.recipe import Recipe
from maskkit.visualize import RECONSTRUCTION_COLUMNS, reconstruction_figure, reconstruction_rows, save_reconstructions


def test_reconstruction_grid_titles_its_columns(builtin_registry, tmp_path):
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    model = build_model(Recipe(tiny_tree(target={"name": "pixels"})), builtin_registry)
    data = FashionMNIST("test", source="embedded")
    images = next(iter(eval_loader(data, model.encoder.img_size, 3)))[0]
    mask = model.draw_mask(3, torch.Generator().manual_seed(0))
    pictures = reconstruction_rows(model, images, mask, data.mean, data.std)  # [3 * 4, 1, 28, 28]
    assert pictures.shape == (12, 1, 28, 28)
    # column 0 is the original image, column 1 the same with the hidden patches grey
    hidden = mask[0].reshape(7, 7).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert torch.equal(pictures[0, 0][~hidden], pictures[1, 0][~hidden]) and (pictures[1, 0][hidden] == 0.5).all()
    fig = reconstruction_figure(pictures, title="three images")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == list(RECONSTRUCTION_COLUMNS) and set(titles[4:]) == {""}  # the first row is titled
    assert fig._suptitle.get_text() == "three images"
    plt.close(fig)
    path = save_reconstructions(model, images, tmp_path / "r.png", mean=data.mean, std=data.std)
    from PIL import Image

    assert Image.open(path).size[0] > 400
