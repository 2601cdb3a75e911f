"""Training data: reading collected datasets and plain arrays, and the reproducible shuffled stream."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sae_core.errors import SAEFormatError, SAEInputError
from sae_core.train.dataset import ActivationDatasetWriter, ShardData, ShardPlan
from sae_core.train.stream import ActivationSource, ShuffledStream


def numbered(n: int, start: int = 0, d: int = 4) -> torch.Tensor:
    """Row i holds the value start + i everywhere, so rows can be identified after shuffling."""
    return (torch.arange(start, start + n, dtype=torch.float32)[:, None]).expand(n, d).contiguous()


@pytest.fixture
def mixed_folder(tmp_path):
    np.save(tmp_path / "part10.npy", numbered(300, 0).numpy())
    save_file({"activations": numbered(500, 300).half(), "step": torch.zeros(500, dtype=torch.int32)},
              str(tmp_path / "part2.safetensors"))
    save_file({"anything": numbered(200, 800)}, str(tmp_path / "part3.safetensors"))
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_plain_folder_of_arrays(mixed_folder):
    source = ActivationSource.open(mixed_folder, chunk_rows=128)
    assert source.total_rows == 1000 and source.d_in == 4
    assert [c.path.name for c in source.chunks][:1] == ["part2.safetensors"]  # natural order: 2 < 3 < 10
    assert max(c.rows for c in source.chunks) == 128
    assert source.read_rows(0, 1000)[:, 0].tolist() == list(range(300, 1000)) + list(range(300))
    assert source.read(source.chunks[0]).dtype == torch.float16  # stored dtype, converted on the device later


def test_bad_arrays_are_named(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 4), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((10, 5), np.float32))
    with pytest.raises(SAEFormatError, match=r"b.npy: has another width.*found d_in 5; expected d_in 4"):
        ActivationSource.open(tmp_path)
    (tmp_path / "b.npy").unlink()
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(SAEFormatError, match=r"c.npy: is not a 2-D array.*shape \(N, d_in\)"):
        ActivationSource.open(tmp_path)
    (tmp_path / "c.npy").unlink()
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(3, 4)}, str(tmp_path / "d.safetensors"))
    with pytest.raises(SAEFormatError, match="several tensors and none is named 'activations'"):
        ActivationSource.open(tmp_path)
    with pytest.raises(SAEInputError, match="does not exist"):
        ActivationSource.open(tmp_path / "nowhere")


def collected(tmp_path, blocks=("down.2.1", "up.0.1")):
    header = {"name": "t", "input_kind": "diff", "model": {"family": "SDXL"},
              "blocks": {b: {"diffusers": d, "hookpoint": "unet." + d, "comfy": c, "channels": 4}
                         for b, d, c in [("down.2.1", "down_blocks.2.attentions.1", "input_blocks.8.1"),
                                         ("up.0.1", "up_blocks.0.attentions.1", "output_blocks.1.1")] if b in blocks}}
    writer = ActivationDatasetWriter(tmp_path / "ds", header)
    writer.plan(["a", "b", "c"], [0, 1, 2], 2)
    for plan in (ShardPlan(0, (0, 2)), ShardPlan(1, (2, 3))):
        per_block = {}
        for j, block in enumerate(blocks):
            data = ShardData()
            rows = numbered(10 * plan.n_prompts, 1000 * j + 100 * plan.index)
            data.activations.append(rows.half())
            for key in data.rows:
                data.rows[key].append(torch.zeros(rows.shape[0], dtype=torch.int32))
            data.grid = (2, 5)
            per_block[block] = data
        writer.write_shard(plan, per_block)
    return tmp_path / "ds"


def test_collected_dataset_by_block_in_any_notation(tmp_path):
    root = collected(tmp_path)
    with pytest.raises(SAEInputError, match=r"several blocks \(down.2.1, up.0.1\); choose one"):
        ActivationSource.open(root)
    for name in ("up.0.1", "up_blocks.0.attentions.1", "unet.up_blocks.0.attentions.1", "output_blocks.1.1"):
        source = ActivationSource.open(root, block=name)
        assert source.total_rows == 30
        assert source.info["hookpoint"] == "unet.up_blocks.0.attentions.1" and source.info["input_kind"] == "diff"
        assert source.read_rows(0, 30)[:, 0].tolist() == list(range(1000, 1020)) + list(range(1100, 1110))
    with pytest.raises(SAEInputError, match=r"block 'mid.0' is not in dataset .* it holds: down.2.1, up.0.1"):
        ActivationSource.open(root, block="mid.0")


def ids(batch: torch.Tensor) -> list[int]:
    return batch[:, 0].long().tolist()


@pytest.fixture
def source(tmp_path):
    for i in range(5):
        np.save(tmp_path / f"s{i}.npy", numbered(200, 200 * i).numpy())
    return ActivationSource.open(tmp_path, chunk_rows=100)  # 10 chunks


def test_every_row_once_per_epoch_and_shuffled_across_shards(source):
    stream = ShuffledStream(source, batch_size=64, seed=1, buffer_rows=300)
    batches = stream.batches(0)
    seen = [i for _ in range(1000 // 64 * 2 + 2) for i in ids(next(batches))]
    assert sorted(seen[:1000]) == list(range(1000))            # first epoch: every row exactly once
    assert sorted(seen[1000:2000]) == list(range(1000))        # second epoch too...
    assert seen[1000:2000] != seen[:1000]                       # ...in another order
    first = seen[:300]                                          # one buffer mixes rows of several chunks/files
    assert len({i // 100 for i in first}) >= 3 and len({i // 200 for i in first}) >= 2
    assert first != sorted(first)


def test_order_is_a_function_of_seed_and_position(source):
    def take(seed, position, n):
        batches = ShuffledStream(source, batch_size=64, seed=seed, buffer_rows=300).batches(position)
        return [ids(next(batches)) for _ in range(n)]

    straight = take(7, 0, 40)
    assert take(7, 64 * 23, 17) == straight[23:]               # resuming mid-epoch and across the epoch end
    assert take(7, 0, 40) == straight
    assert take(8, 0, 5) != straight[:5]


def test_ranks_split_each_global_batch(source):
    whole = ShuffledStream(source, batch_size=96, seed=3, buffer_rows=250).batches(0)
    halves = [ShuffledStream(source, batch_size=96, seed=3, buffer_rows=250, rank=r, world_size=2).batches(0)
              for r in range(2)]
    for _ in range(25):
        assert ids(next(whole)) == ids(next(halves[0])) + ids(next(halves[1]))
    with pytest.raises(SAEInputError, match="multiple of the number of processes"):
        ShuffledStream(source, batch_size=95, world_size=2)


def test_unshuffled_stream_is_file_order(source):
    batches = ShuffledStream(source, batch_size=300, shuffle=False, prefetch=False).batches(0)
    assert ids(next(batches)) == list(range(300))
    assert ids(next(batches)) == list(range(300, 600))
