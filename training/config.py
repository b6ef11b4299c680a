"""The one set of settings a run uses, shared by every stage and written next to what each stage makes."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from serving.imaging import MAX_PIXELS

# The lesson's example: grizzly, black and teddy bears, searched as "<label> bear".
DEFAULT_LABELS = ("grizzly", "black", "teddy")
# For the bears, photos of everything else, to measure "none of these" on (DATA/other/; never trained on).
DEFAULT_OTHER_QUERIES = ("landscape photo", "city street", "food", "dog", "living room")


@dataclass(frozen=True)
class Config:
    # --- what to classify -------------------------------------------------------------------
    name: str = "bears"
    # Empty means: every label the input folder/CSV/archive holds, or the lesson's bears when searching.
    labels: tuple[str, ...] = ()
    query: str = "{label} bear"  # search template; {label} is replaced by each label

    # --- data: inputs ----------------------------------------------------------------------
    max_images: int = 150  # per label from search: about what the lesson used, enough for a good resnet18
    urls: Path | None = None  # CSV `label,url`, or one URL a line for a single label
    from_folder: Path | None = None  # one subfolder per label
    archive: str | None = None  # .zip/.tgz of label folders, path or URL
    data: Path | None = None  # defaults to data/<name>
    search_pause: float = 1.0  # seconds between queries: image search rate-limits bursts
    search_retries: int = 4
    # Searches for photos of none of the labels, fetched into DATA/other/ to measure the "none of these" check:
    # empty means the bears' DEFAULT_OTHER_QUERIES when searching for the bears, else none.
    other_queries: tuple[str, ...] = ()
    other_per_query: int = 20

    # --- data: download --------------------------------------------------------------------
    allow_private_urls: bool = False  # loopback/private addresses are refused unless set (tests set it)
    # Concurrent downloads. The wait is network latency, not CPU, and search results spread over many
    # hosts, so 32 keeps each host's share small while hiding the round trips (bench/download.py).
    workers: int = 32
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    deadline: float = 30.0  # whole-file limit, so a server dripping a byte a second cannot hold a worker
    max_bytes: int = 20_000_000
    retries: int = 3  # on 429 and 5xx only
    max_retry_after: float = 30.0  # longest Retry-After we honour before calling it failed
    retry_failed: bool = False  # a rerun skips URLs already tried unless this is set

    # --- data: clean -----------------------------------------------------------------------
    min_side: int = 64
    max_side: int = 512  # training crops 224px; 512 leaves room for RandomResizedCrop
    max_pixels: int = MAX_PIXELS  # the app's own cap: a training image is one the app would take
    near_duplicate_distance: int = 4  # perceptual-hash bits; resized/recompressed copies differ by 0-2
    min_per_label: int = 10

    # --- train -----------------------------------------------------------------------------
    out: Path | None = None  # model folder, defaults to models/<name>
    arch: str = "resnet18"
    pretrained: bool = True  # --no-pretrained only for offline runs and tests
    epochs: int = 4
    size: int = 224
    batch_size: int = 32
    lr: float | None = None  # None: use the learning-rate finder's suggestion
    seed: int = 42
    valid_pct: float = 0.2
    min_scale: float = 0.5  # RandomResizedCrop keeps at least half the image area
    # "None of these" (serving/novelty.py): the k-th nearest training image, and the share of validation images
    # that must pass the threshold. Images showing none of the labels, to measure it on: --other, else DATA/other/.
    novelty_k: int = 1  # measured best of 1, 5, 10 and 50 here (bench/novelty.py, docs/decisions.md)
    novelty_pass_rate: float = 0.95
    other: Path | None = None
    # The int8 model (training/train/quantize.py) serves only if it agrees with the float one on this share of the
    # validation images and its error rate is at most this much higher (0.005: half a point).
    int8: bool = True
    int8_min_agreement: float = 0.99
    int8_max_error_gap: float = 0.005

    # --- publish ---------------------------------------------------------------------------
    repo_id: str | None = None  # Hub model repo "user/name"; `all` publishes only when it is set
    space: str | None = None  # Hub Space "user/name" serving repo_id; `all` deploys only when it is set
    # Visibility is set only when a repo is created, so --private refuses to upload into an existing public one.
    private: bool = False
    # The trained weights' licence. The web images they learned from keep their owners' rights (see the card).
    license: str = "apache-2.0"
    hardware: str | None = None  # Space hardware; None keeps what the Space has (free cpu-basic when new)

    # --- review ----------------------------------------------------------------------------
    review_port: int = 7861  # next to the app's 7860, so the demo and the review page can run side by side
    # Hardest images shown per label and split: about a screenful. Fixing them and training again brings up the next.
    review_count: int = 24

    @property
    def data_dir(self) -> Path:
        return self.data if self.data is not None else Path("data") / self.name

    @property
    def other_dir(self) -> Path:
        return self.other if self.other is not None else self.data_dir / "other"

    @property
    def model_dir(self) -> Path:
        return self.out if self.out is not None else Path("models") / self.name

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """Plain JSON-able settings, for writing next to an artifact."""
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    def write(self, path: Path, **extra) -> None:
        """Write the settings, and `extra` facts about the run, as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.to_json(), **extra}, indent=2) + "\n")
