"""Pictures explain themselves: the reconstruction grid titles its columns."""

import pytest
import torch
from helpers import tiny_tree

from maskkit import cli
from maskkit.builder import build_model
from maskkit.data.fashion_mnist import FashionMNIST
from maskkit.errors import MaskkitError
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


def test_a_picture_out_that_is_a_folder_or_no_picture_format_is_one_line_and_the_written_file_is_named(
        tmp_path, capsys, builtin_registry):
    argv = ["masks", "show", "random", "ratio=0.5", "--grid", "4x4", "--count", "2", "--out"]
    assert cli.main([*argv, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"maskkit: error: {tmp_path}: is a folder, expected a picture file such as {tmp_path}/picture.png\n"
    assert cli.main([*argv, str(tmp_path / "masks.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"maskkit: error: {tmp_path / 'masks.txt'}: cannot write a .txt picture; expected one of ")
    assert ".png" in err and err.count("\n") == 1 and not (tmp_path / "masks.txt").exists()
    assert cli.main([*argv, str(tmp_path / "masks")]) == 0  # matplotlib adds .png: the line says so
    assert f"wrote {tmp_path / 'masks.png'}\n" in capsys.readouterr().out and (tmp_path / "masks.png").is_file()
    model = build_model(Recipe(tiny_tree(target={"name": "pixels"})), builtin_registry)
    with pytest.raises(MaskkitError, match="is a folder, expected a picture file"):
        save_reconstructions(model, torch.zeros(1, 1, 28, 28), tmp_path, mean=(0.5,), std=(0.5,))
