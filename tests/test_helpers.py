"""The small helpers every page uses: eval mode restored, param groups, grid means, the size table."""
import re

import pandas as pd
import pytest
import torch

from kit import experiment, io as kit_io, notebook, runtime, train


def test_evaluating_restores_the_mode_even_when_the_block_raises():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    with runtime.evaluating(model):
        assert not model.training and not torch.is_grad_enabled()
    assert model.training and torch.is_grad_enabled()
    with pytest.raises(RuntimeError, match="inside"):
        with runtime.evaluating(model):
            raise RuntimeError("inside")
    assert model.training
    model.eval()
    with runtime.evaluating(model, grad=True):
        assert torch.is_grad_enabled()
    assert not model.training  # it was in eval mode before: it stays there
    with pytest.raises(TypeError, match="nn.Module"):
        with runtime.evaluating("model"):
            pass


def test_param_groups_put_every_parameter_in_one_group_with_its_scale_and_decay():
    model = torch.nn.ModuleDict({"offsets": torch.nn.Linear(3, 3), "body": torch.nn.Linear(3, 3)})
    groups = train.param_groups(model, slow=lambda n: n.startswith("offsets"), slow_lr_scale=0.1,
                                no_decay=lambda n, p: p.ndim == 1)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters()) and len(seen) == len(set(seen))
    by_key = {(g["lr_scale"], g.get("weight_decay")): g["params"] for g in groups}
    assert by_key[(0.1, 0.0)] == [model["offsets"].bias] and by_key[(1.0, None)] == [model["body"].weight]
    assert len(train.param_groups(model)) == 1  # no predicates: one group of everything
    with pytest.raises(ValueError, match="slow_lr_scale"):
        train.param_groups(model, slow_lr_scale=0)


def test_grid_mean_std_and_formatter_agree_with_pandas():
    table = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "AP": [0.1, 0.2, 0.6, 1, 1, 1]})
    grid = experiment.Grid(["a", "b"], [0, 1, 2], table)
    assert grid.mean("a", "AP") == pytest.approx(0.3)
    assert grid.std("a", "AP") == pytest.approx(table.AP[:3].std(ddof=1))
    assert grid.std("b", "AP") == 0.0
    assert grid.mean_std("a", "AP", scale=100) == "30.0 ± 26.5 (n=3)"


def test_size_table_abbreviates_long_lists_and_bolds_the_active_profile():
    sizes = {p: {"steps": 10 * (i + 1), "k": list(range(8))} for i, p in enumerate(["smoke", "cpu", "gpu"])}
    styler = notebook.sizes_table(sizes, "cpu")
    assert styler.data.loc["cpu", "k"] == "[0, 1, 2, …, 7] (8)" and styler.data.loc["gpu", "steps"] == "30"
    bold_cells = re.search(r"<style[^>]*>\s*([^{]*)\{\s*font-weight: bold;", styler.to_html()).group(1)
    assert re.findall(r"_row(\d)_col(\d)", bold_cells) == [("1", "0"), ("1", "1")]  # the cpu row, every cell
    with pytest.raises(ValueError, match="active must be one of"):
        notebook.sizes_table(sizes, "laptop")


def test_save_torch_writes_a_loadable_file_atomically(tmp_path):
    target = tmp_path / "deep" / "state.pt"
    kit_io.save_torch(target, {"w": torch.arange(3)})
    assert torch.equal(torch.load(target)["w"], torch.arange(3))
    assert not list(target.parent.glob(".*.tmp"))
