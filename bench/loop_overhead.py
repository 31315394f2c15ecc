"""How much slower is mmtune's training loop than a minimal hand-written PyTorch loop?

Both sides train the SAME model (two copies built by ``mmtune.models.build_model`` from the same
seed), on the SAME data (the default synthetic dataset, whole tensors on the device), with the
SAME batch size, batch order (``randperm`` from a CPU generator seeded alike) and optimizer (SGD,
lr 0.01, momentum 0.9, weight decay 1e-4, ``foreach=True`` as mmtune's ``build_optimizer``). They
therefore compute the same numbers — the script checks that the two models end bit-identical —
and any time difference is loop overhead.

Two measurements, side by side in one process, interleaved epoch by epoch (mmtune, hand, mmtune,
hand …; the order flips every epoch slot) so that clock / thermal drift hits both alike:

(a) train epoch: ``mmtune.engine.loop.train_epoch`` with the ``joint`` method vs the hand loop.
(b) full epoch: ``Trial.step()`` (train + evaluate val and test, every DESIGN §3.3 metric) vs the
    hand loop plus a hand accuracy evaluation of val and test (one host read-back per epoch).
(c) a breakdown of (b): the evaluation alone — mmtune's ``evaluate`` on val and test (acc, macro-F1,
    mAP, per-modality accuracy, discrepancy ratio) vs the hand accuracy — on the models of (a).

Each repeat builds fresh models, discards ``--warmup`` epochs, then times ``--epochs`` epochs of
each side. Per repeat we take each side's median epoch time, and the median of the paired ratios
(each mmtune epoch / the hand epoch run right next to it); reported are the medians over repeats.
Goal of the project: ratio <= 1.05. ``--json`` also gives every epoch's time (``epoch_times``).

    python bench/loop_overhead.py                    # rich table
    python bench/loop_overhead.py --json             # last stdout line: one JSON object
    python bench/loop_overhead.py --backbone cnn     # shaped (image-like) synthetic inputs
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
import torch.nn.functional as F

from _common import add_device_arg, console, device_label, emit_json, env_info, median, pick_device, timed

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
EVAL_BATCH_SIZE = 1024  # TrainConfig's default eval_batch_size, used by Trial.step
# Per-backbone defaults that keep a default run under ~60 s on 2 CPU cores.
DEFAULTS = {"mlp": {"epochs": 20, "repeats": 5, "warmup": 3}, "cnn": {"epochs": 3, "repeats": 3, "warmup": 1}}


# ------------------------------------------------------------------------------- the hand loop
def hand_train_epoch(model, inputs: dict, labels, optimizer, *, batch_size: int, generator: torch.Generator):
    """A minimal, idiomatic epoch: shuffle, slice, forward, loss, backward, step."""
    model.train()
    order = torch.randperm(labels.shape[0], generator=generator).to(labels.device)
    loss_sum = torch.zeros((), device=labels.device)
    for idx in order.split(batch_size):
        x = {m: t.index_select(0, idx) for m, t in inputs.items()}
        y = labels.index_select(0, idx)
        loss = F.cross_entropy(model(x).logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach() * idx.numel()
    return loss_sum / labels.shape[0]


@torch.no_grad()
def hand_accuracy(model, inputs: dict, labels, *, batch_size: int = EVAL_BATCH_SIZE):
    model.eval()
    correct = torch.zeros((), device=labels.device)
    for start in range(0, labels.shape[0], batch_size):
        x = {m: t[start : start + batch_size] for m, t in inputs.items()}
        correct += (model(x).logits.argmax(1) == labels[start : start + batch_size]).sum()
    return correct / labels.shape[0]


def hand_full_epoch(model, data, optimizer, *, batch_size: int, generator: torch.Generator) -> list[float]:
    loss = hand_train_epoch(model, data.train.inputs, data.train.labels, optimizer, batch_size=batch_size, generator=generator)
    val = hand_accuracy(model, data.val.inputs, data.val.labels)
    test = hand_accuracy(model, data.test.inputs, data.test.labels)
    return torch.stack([loss, val, test]).tolist()  # one host read-back, as Trial.step does


# ------------------------------------------------------------------------------- set-up
def dataset_config(backbone: str) -> dict[str, Any]:
    # The default synthetic dataset; conv encoders need its image-like ("shaped") variant.
    return {"name": "synthetic", "shape": "shaped"} if backbone == "cnn" else {"name": "synthetic"}


def make_model(backbone: str, seed: int, data, device: torch.device):
    from mmtune.models import ModelConfig, build_model

    torch.manual_seed(seed)  # exactly what Trial does before build_model
    model = build_model(ModelConfig(backbone=backbone), input_shapes=data.input_shapes, num_classes=data.num_classes)
    return model.to(device)


def hand_optimizer(model) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, foreach=True)


@torch.no_grad()
def max_param_diff(a, b) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))


class Sides:
    """One repeat's runners: (a) mmtune/hand train epoch, (b) mmtune/hand full epoch, (c) their evaluations."""

    def __init__(self, args: argparse.Namespace, seed: int, data, device: torch.device):
        from mmtune.engine.method import StepContext
        from mmtune.engine.optim import build_optimizer
        from mmtune.engine.trial import Trial, parse_trial_config
        from mmtune.trainables import get_method

        self.args, self.data, self.device, self.seed = args, data, device, seed
        bs = args.batch_size
        self.StepContext = StepContext

        # (a) train_epoch with a joint method instance vs the hand loop, identical models.
        self.mm_model = make_model(args.backbone, seed, data, device)
        joint = get_method("joint")
        self.method = joint(joint.Config(), modalities=data.modalities, num_classes=data.num_classes, device=device)
        self.method.bind(self.mm_model)
        params = list(self.mm_model.parameters()) + self.method.extra_parameters()
        self.mm_opt = build_optimizer(params, name="sgd", lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.mm_gen = torch.Generator().manual_seed(seed)
        self.method_gen = torch.Generator(device).manual_seed(seed + 1_000_003)
        self.epoch = self.global_step = 0

        self.hand_model = make_model(args.backbone, seed, data, device)
        self.hand_opt = hand_optimizer(self.hand_model)
        self.hand_gen = torch.Generator().manual_seed(seed)

        # (b) Trial.step() vs hand train + hand accuracy on val and test.
        cfg = {
            "method": "joint", "seed": seed, "dataset": dataset_config(args.backbone),
            "model": {"backbone": args.backbone},
            "train": {"batch_size": bs, "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
                      "optimizer": "sgd", "device": device.type},
        }
        self.trial = Trial(parse_trial_config(cfg))
        self.full_model = make_model(args.backbone, seed, data, device)
        self.full_opt = hand_optimizer(self.full_model)
        self.full_gen = torch.Generator().manual_seed(seed)

    def mm_train(self) -> None:
        from mmtune.engine.loop import train_epoch

        self.epoch += 1
        ctx = self.StepContext(epoch=self.epoch, step=0, global_step=self.global_step,
                               modulating=self.method.in_window(self.epoch), generator=self.method_gen, device=self.device)
        train_epoch(self.mm_model, self.data.train, self.method, self.mm_opt, ctx,
                    batch_size=self.args.batch_size, data_generator=self.mm_gen)
        self.global_step = ctx.global_step

    def hand_train(self) -> None:
        hand_train_epoch(self.hand_model, self.data.train.inputs, self.data.train.labels, self.hand_opt,
                         batch_size=self.args.batch_size, generator=self.hand_gen)

    def mm_eval(self) -> None:
        """What Trial.step does after training: evaluate val and test, read every metric back once."""
        from mmtune.engine.loop import evaluate

        metrics = evaluate(self.mm_model, self.data.val, batch_size=EVAL_BATCH_SIZE, prefix="val")
        test = evaluate(self.mm_model, self.data.test, batch_size=EVAL_BATCH_SIZE, prefix="test")
        metrics.update({k: v for k, v in test.items() if not k.startswith("imbalance/")})
        torch.stack([v.float().reshape(()) for v in metrics.values()]).cpu().tolist()

    def hand_eval(self) -> None:
        val = hand_accuracy(self.hand_model, self.data.val.inputs, self.data.val.labels)
        test = hand_accuracy(self.hand_model, self.data.test.inputs, self.data.test.labels)
        torch.stack([val, test]).tolist()

    def mm_full(self) -> None:
        self.trial.step()

    def hand_full(self) -> None:
        hand_full_epoch(self.full_model, self.data, self.full_opt, batch_size=self.args.batch_size, generator=self.full_gen)


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from mmtune.data import dataset_config as parse_dataset
    from mmtune.data.synthetic import make_synthetic

    load_before = os.getloadavg()[0]
    data = make_synthetic(parse_dataset(dataset_config(args.backbone)), device)
    steps = -(-len(data.train) // args.batch_size)
    pairs = [("mm_train", "hand_train"), ("mm_full", "hand_full"), ("mm_eval", "hand_eval")]
    keys = [k for pair in pairs for k in pair]
    per_repeat: dict[str, list[float]] = {k: [] for k in keys}  # median epoch seconds of each repeat
    ratio_names = {"mm_train": "ratio", "mm_full": "ratio_full_epoch", "mm_eval": "ratio_eval"}
    paired: dict[str, list[float]] = {n: [] for n in ratio_names.values()}  # per repeat: median of epoch ratios
    epoch_times: dict[str, list[list[float]]] = {k: [] for k in keys}
    same_math: list[float] = []
    for r in range(args.repeats):
        sides = Sides(args, seed=r, data=data, device=device)
        times: dict[str, list[float]] = {k: [] for k in keys}
        for slot in range(args.warmup + args.epochs):
            order = [k for a, b in pairs for k in ((a, b) if (slot + r) % 2 == 0 else (b, a))]  # ABAB, then BABA
            for k in order:
                seconds, _ = timed(getattr(sides, k), device)
                if slot >= args.warmup:
                    times[k].append(seconds)
        for k in keys:
            per_repeat[k].append(median(times[k]))
            epoch_times[k].append(times[k])
        for a, b in pairs:
            # Each mmtune epoch against the hand epoch run right next to it: drift cancels pair by pair.
            paired[ratio_names[a]].append(median([x / y for x, y in zip(times[a], times[b], strict=True)]))
        # Same model, data, order and optimizer: the two loops must have computed the same weights.
        same_math.append(max(max_param_diff(sides.mm_model, sides.hand_model),
                             max_param_diff(sides.trial.model, sides.full_model)))
    ratios, ratios_full, ratios_eval = paired["ratio"], paired["ratio_full_epoch"], paired["ratio_eval"]
    env = env_info(device)
    return {
        "ratio": median(ratios),
        "ratio_full_epoch": median(ratios_full),
        "mmtune_epoch_s": median(per_repeat["mm_train"]),
        "hand_epoch_s": median(per_repeat["hand_train"]),
        "mmtune_full_epoch_s": median(per_repeat["mm_full"]),
        "hand_full_epoch_s": median(per_repeat["hand_full"]),
        "ratio_eval": median(ratios_eval),
        "mmtune_eval_s": median(per_repeat["mm_eval"]),
        "hand_eval_s": median(per_repeat["hand_eval"]),
        "device": env["device"],
        "device_name": env["device_name"],
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "steps_per_epoch": steps,
        "train_samples": len(data.train),
        "max_param_diff": max(same_math),
        "loadavg_1m": [load_before, os.getloadavg()[0]],  # before / after: other load skews timings
        "per_repeat": {**per_repeat, "ratio": ratios, "ratio_full_epoch": ratios_full, "ratio_eval": ratios_eval},
        "epoch_times": epoch_times,
        "torch": env["torch"],
        "threads": env["threads"],
    }


def report(res: dict[str, Any], device: torch.device, json_mode: bool) -> None:
    from rich import box
    from rich.table import Table

    out = console(json_mode)
    title = f"mmtune loop vs hand loop · {res['backbone']} · batch {res['batch_size']} · {res['steps_per_epoch']} steps/epoch"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("measure", "mmtune s", "hand s", "ratio", "min–max", "Δ/step"):
        table.add_column(col, justify="left" if col == "measure" else "right", no_wrap=True)
    rows = [
        ("(a) train epoch", "mmtune_epoch_s", "hand_epoch_s", "ratio"),
        ("(b) full epoch", "mmtune_full_epoch_s", "hand_full_epoch_s", "ratio_full_epoch"),
        ("  (c) eval val+test", "mmtune_eval_s", "hand_eval_s", "ratio_eval"),
    ]
    for name, mk, hk, rk in rows:
        rs = res["per_repeat"][rk]
        over_us = (res[mk] - res[hk]) / res["steps_per_epoch"] * 1e6
        style = "green" if res[rk] <= 1.05 else "red"
        if rk == "ratio_eval":
            style = "dim"  # a breakdown of (b), not a goal
        table.add_row(name, f"{res[mk]:.4f}", f"{res[hk]:.4f}", f"[{style}]{res[rk]:.3f}[/{style}]",
                      f"{min(rs):.3f}–{max(rs):.3f}", f"{over_us:+.0f} µs")
    out.print(table)
    out.print(
        f"(a) train_epoch(joint) vs hand loop; (b) Trial.step() vs hand train + hand accuracy on val/test; "
        f"(c) the evaluation part of (b) alone (mmtune computes acc, macro-F1, mAP, per-modality acc and ρ; "
        f"the hand eval only acc).\n"
        f"Seconds per epoch: medians over {res['repeats']} repeats of per-repeat medians over {res['epochs']} "
        f"interleaved epochs ({res['warmup']} warm-up epochs discarded); ratio = median over repeats of "
        f"each repeat's median paired epoch ratio mmtune/hand; Δ/step = (mmtune − hand) / steps per epoch. Goal: ratio ≤ 1.05.\n"
        f"Same-computation check: max |Δparam| mmtune vs hand = {res['max_param_diff']:.3g}"
        + (" (bit-identical)" if res["max_param_diff"] == 0 else "")
        + f".\nDevice: {device_label(device)}; torch {res['torch']}; 1-min load average before/after "
        f"{res['loadavg_1m'][0]:.2f}/{res['loadavg_1m'][1]:.2f} on {os.cpu_count()} cores."
    )
    spread = max(res["per_repeat"]["ratio"]) / min(res["per_repeat"]["ratio"])
    if spread > 1.10:
        out.print(f"[yellow]Noisy run: the per-repeat train ratios differ by {100 * (spread - 1):.0f}% "
                  "(other load on the machine?); rerun when idle or raise --repeats.[/yellow]")
    if device.type == "cpu":
        out.print("[yellow]Ran on CPU: no CUDA device was used.[/yellow]")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per repeat (default: 20 mlp, 3 cnn)")
    p.add_argument("--repeats", type=int, default=None, help="fresh-model repeats (default: 5 mlp, 3 cnn)")
    p.add_argument("--warmup", type=int, default=None, help="discarded epochs per repeat (default: 3 mlp, 1 cnn)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64, TrainConfig's)")
    p.add_argument("--backbone", choices=("mlp", "cnn"), default="mlp")
    add_device_arg(p)
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.backbone].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.epochs < 1 or args.repeats < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--epochs, --repeats and --batch-size must be >= 1 and --warmup >= 0")
    device = pick_device(args.device)
    res = run(args, device)
    report(res, device, args.json)
    if args.json:
        emit_json(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
