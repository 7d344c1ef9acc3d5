"""One entry point per DVC stage: `python -m stages.<name>`.

The stages that build or run the model import TensorFlow here, before anything else does, with
its C++ start-up chatter hidden (FACEMASK_VERBOSE=1 shows it); later imports reuse it.
"""

import os
import sys

from pipeline.quiet import import_tensorflow

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in the stage logs
if {"stages.train", "stages.evaluate", "stages.export"} & set(sys.orig_argv):
    import_tensorflow()
