"""Prepare a room for a workshop: every model and wheel on one folder a USB stick can carry,
a check of that folder, and a timetable of measured chapter run times.

    python -m tools.workshop prepare DIR --profiles t4,gpu-4gb [--platform TAG] [--with-torch]
    python -m tools.workshop check DIR
    python -m tools.workshop measure [--label NAME] [CHAPTER ...]
    python -m tools.workshop timetable [TIMINGS.json ...]

What ``prepare`` writes into DIR:

    hf/hub/models--ORG--NAME/snapshots/REVISION/...  each profile's model and tokenizer, in the
                                                    hub's cache layout, as plain files (no links)
    hf/hub/models--ORG--NAME/refs/main               written once that model is complete
    wheels/PLATFORM-pyVERSION/*.whl                  the course's dependencies (torch if asked)
    .partial/                                        downloads in progress; prepare resumes them
    workshop-manifest.json                           written last: the sha256 of every file,
                                                    and of the manifest's own content

``HF_HOME=DIR/hf HF_HUB_OFFLINE=1`` then makes every profile's hub id load from the folder.
Models are fetched at the commit each profile pins (``Profile.revision``).

``check`` verifies exactly the manifest (``tools/workshop/manifest.py``): every listed file
present and unchanged, paths only inside DIR, nothing unlisted under ``hf/`` or ``wheels/``, and
the manifest itself as ``prepare`` wrote it.
"""

from tools.workshop.manifest import MANIFEST, check_folder
from tools.workshop.model_files import FetchError, HubSource, RemoteFile, prepare_models
from tools.workshop.timetable import load_timings, timetable
from tools.workshop.wheels import WheelhouseError, prepare_wheelhouse

__all__ = [
    "MANIFEST",
    "FetchError",
    "HubSource",
    "RemoteFile",
    "WheelhouseError",
    "check_folder",
    "load_timings",
    "prepare_models",
    "prepare_wheelhouse",
    "timetable",
]
