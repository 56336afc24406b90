"""`jaxseg doctor`: one command that checks a machine is fit to train.

  jaxseg doctor [--quick] [--json OUT] [--only NAME,...] [--data_dir DIR]
  python -m jaxseg.doctor ...                      (the same, without the rest of the CLI)

Checks, each a record {name, ok, seconds, message, details}; a failed check does not stop the
others, and the exit status is 1 if any failed:
  environment      backend, devices, jax/jaxlib/plugin versions, XLA_FLAGS, compilation cache,
                   launcher; fails when a GPU/TPU plugin is installed but JAX fell back to the CPU
  op_parity        atrous conv, conv transpose, max pool (+ gradient), argmax pool + unpool:
                   accelerator vs CPU in float32 (highest precision) and bfloat16
  train_step_bN    PSPNet-50 473x473 bfloat16 train step at batch 2 and 8: time, peak memory, MFU
  train_loop       `train_and_evaluate`'s images/s against the bare step (goal >= 0.97)
  checkpoint       orbax save + restore of a train state, compared bitwise
  multiscale_eval  compile time and memory of a multi-scale (0.5-1.75) + flip eval
The full form takes about 8 minutes on one GPU; on the CPU backend (or with --quick) a reduced
form runs every check at tiny sizes in well under a minute: a CI smoke test.

One module per concern:
  forms          the sizes of the full and the reduced form, and the configs they build
  inputs         random train states (laid out by create_train_state(abstract=True)) and batches
  runner         Outcome/Record/Context, running checks (errors become failed records), the table
                 and the JSON file
  environment, parity, training (train step + loop), checkpointing, evaluation   the checks
  command        flags, the plan of checks, `register(subparsers)`, `main(argv)`
"""
from jaxseg.doctor.command import DESCRIPTION, add_arguments, cmd_doctor, main, plan, register

__all__ = ['DESCRIPTION', 'add_arguments', 'cmd_doctor', 'main', 'plan', 'register']
