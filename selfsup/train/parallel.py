"""How the model runs on the processes: DDP or FSDP2, and ``torch.compile``.

* ``train.strategy: ddp`` (default): every process holds the whole model, DDP averages gradients
  (:func:`selfsup.train.session._ddp`).
* ``train.strategy: fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``, the public API of torch
  >= 2.6) shards parameters, gradients and optimizer state over the processes: each ViT block is one
  unit (all-gathered for its forward and backward, then freed), the rest of the method is the root
  unit. Gradients are reduce-scattered as averages, as DDP's all-reduce, so the gathered losses
  (NT-Xent, VICReg, DINO's centers...) stay exact. Checkpoints go through ``torch.distributed.checkpoint``
  (each process writes its shards; :func:`save_sharded`, :func:`load_sharded`).
* ``train.compile: true``: ``torch.compile`` on the backbone and heads, in place (``Module.compile``),
  so that state-dict keys keep their names (no ``_orig_mod.``) and checkpoints stay interchangeable.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from selfsup.nets.vit import MaskedViT

__all__ = ["compile_in_place", "fully_shard_method", "save_sharded", "load_sharded", "full_state_dict",
           "SHARDED_DIR"]

#: the run sub-directory holding ``torch.distributed.checkpoint`` folders (``train.strategy: fsdp``)
SHARDED_DIR = "sharded"


def compile_in_place(method: nn.Module) -> list[str]:
    """``torch.compile`` every module the method calls: each block (and the patch embedding) of a
    :class:`MaskedViT`, since MIM methods call its stages directly rather than its ``forward``, and every
    other child module with parameters (backbone, projector, predictor, heads, teachers) as a whole.
    Returns the names compiled."""
    done: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, MaskedViT):
                for i, block in enumerate(child.blocks):
                    block.compile()
                child.patch_embed.compile()
                done.append(f"{path}.blocks[0..{len(child.blocks) - 1}], {path}.patch_embed")
            elif any(isinstance(m, MaskedViT) for m in child.modules()):
                visit(child, f"{path}.")
            elif any(True for _ in child.parameters()):
                child.compile()
                done.append(path)

    visit(method, "")
    return done


def fully_shard_method(method: nn.Module) -> nn.Module:
    """FSDP2 over ``method`` in place: rank 0's initial weights and buffers are broadcast first (each
    process built its own), then every ViT block (student and teacher) is sharded as one unit, then the
    root. Build the optimizer afterwards: sharding replaces the parameters by ``DTensor`` ones."""
    from torch.distributed.fsdp import fully_shard

    for t in [*method.parameters(), *method.buffers()]:
        dist.broadcast(t.data, src=0)
    for m in method.modules():
        if isinstance(m, MaskedViT):
            for block in m.blocks:
                fully_shard(block)
    fully_shard(method)
    return method


def full_state_dict(method: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on CPU, on rank 0 (empty on the others): every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(method, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _states(method: nn.Module, opt: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(method, opt)
    return {"method": msd, "optimizer": osd}


def save_sharded(method: nn.Module, opt: torch.optim.Optimizer, run: Path, name: str) -> None:
    """Every rank writes its shards of the method and optimizer to ``run/sharded/name`` (a new folder per
    checkpoint: ``checkpoint.pt``, written after it, names the folder to resume from, so a crash
    mid-save leaves the previous pair intact)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_states(method, opt), checkpoint_id=str(run / SHARDED_DIR / name))


def load_sharded(method: nn.Module, opt: torch.optim.Optimizer, run: Path, name: str) -> None:
    """Load ``run/sharded/name`` into the sharded method and optimizer (every rank reads its shards).

    ``get_state_dict`` gives every parameter an optimizer state (a zero-lr step); parameters that had none
    when saved (no gradient yet, e.g. DINO's frozen last layer) are dropped from it again, so the resumed
    optimizer holds exactly the saved state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    path = str(run / SHARDED_DIR / name)
    saved = set(dcp.FileSystemReader(path).read_metadata().state_dict_metadata)
    state = _states(method, opt)
    per_param = state["optimizer"]["state"]
    for fqn in list(per_param):
        kept = {k: v for k, v in per_param[fqn].items() if f"optimizer.state.{fqn}.{k}" in saved}
        if kept:
            per_param[fqn] = kept
        else:
            del per_param[fqn]
    dcp.load(state, checkpoint_id=path)
    set_state_dict(method, opt, model_state_dict=state["method"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))
    for fqn, p in method.named_parameters():
        if fqn not in per_param:
            opt.state.pop(p, None)


def prune_sharded(run: Path, keep: str) -> None:
    """Remove the sharded folders other than ``keep`` (rank 0, once ``checkpoint.pt`` names ``keep``)."""
    root = run / SHARDED_DIR
    for d in root.iterdir() if root.is_dir() else ():
        if d.name != keep:
            shutil.rmtree(d, ignore_errors=True)
