"""Subprocess used by test_sigkill.py: trains the tiny DyCON setup with a checkpoint every iteration.

Usage: python resume_worker.py OUT_DIR [--full] [--die-in-save N] [--sleep S]

Resumes from the latest checkpoint in OUT_DIR/ckpt when there is one; writes OUT_DIR/final.pt (student and teacher
state dicts) when training completes. ``--die-in-save N`` kills the process with SIGKILL halfway through writing
the checkpoint of iteration N; ``--full`` trains without checkpoints.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ignite.engine import Events  # noqa: E402
from mt_helpers import make_loaders, make_net, make_trainer  # noqa: E402

import dycon_monai.handlers.checkpoint as ckpt_mod  # noqa: E402
from dycon_monai.handlers import AtomicCheckpointSaver, checkpoint_dict, checkpoint_loader, latest_checkpoint  # noqa: E402

MAX_EPOCHS = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--die-in-save", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    ckpt_dir = args.out / "ckpt"
    trainer = make_trainer(
        "dycon", max_epochs=MAX_EPOCHS, loaders=make_loaders(n_labeled=6, n_unlabeled=4), net=make_net(seed=0)
    )
    if not args.full:
        if args.die_in_save:
            real_save = torch.save

            def dying_save(obj, f, *a, **kw):
                if trainer.state.iteration == args.die_in_save:
                    f.write(b"partial checkpoint bytes")
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_save(obj, f, *a, **kw)

            ckpt_mod.torch.save = dying_save
        AtomicCheckpointSaver(ckpt_dir, checkpoint_dict(trainer), save_interval=1, n_saved=2, save_final=False).attach(
            trainer
        )
        last = latest_checkpoint(ckpt_dir)
        if last is not None:
            checkpoint_loader(last, trainer).attach(trainer)
        if args.sleep:
            trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: time.sleep(args.sleep))

    def log(engine):
        print(f"iteration {engine.state.iteration} loss {engine.state.loss_terms['loss']!r}", flush=True)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, log)
    trainer.run()
    torch.save(
        {"student": trainer.network.state_dict(), "teacher": trainer.teacher_network.state_dict()},
        args.out / "final.pt",
    )


if __name__ == "__main__":
    main()
