"""GPU check: on a CUDA machine, start the model actors with num_gpus, show their models on cuda,
run both diarization backends and both emotion backends on a real file, print timings.

Without CUDA it prints why and exits 0. Real weights are not downloadable here, so the pyannote and
speechbrain backends run on the offline random-weight checkpoints (speed and placement, not accuracy).

    .venv/bin/python scripts/gpu_check.py [AUDIO]    # default: ../shared/data/diarization/sample.wav
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine; skipping (nothing to check).")
        return 0
    import ray

    from raysys.actors.diarization import diarization_pool, diarize_file
    from raysys.actors.embedding import embed_texts, embedding_pool
    from raysys.actors.emotion import analyze_file, emotion_pool
    from raysys.actors.pool import shutdown_pools
    from raysys.config import Settings
    from raysys.models.random_checkpoints import build_pyannote_pipeline, build_speechbrain_emotion

    audio = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "diarization" / "sample.wav"
    if not audio.exists():
        print(f"gpu_check: {audio} not found")
        return 1
    print(f"device: {torch.cuda.get_device_name(0)}  torch {torch.__version__}  cuda {torch.version.cuda}")
    work = Path(tempfile.mkdtemp(prefix="raysys-gpu-check-"))
    t0 = time.perf_counter()
    pipeline = build_pyannote_pipeline(work / "pyannote", chunk_seconds=10.0, step=0.1)
    recipe = build_speechbrain_emotion(work / "speechbrain")
    print(f"random checkpoints built in {time.perf_counter() - t0:.1f} s")
    settings = Settings.from_env({}, data_dir=str(work / "data"), diarization_model=str(pipeline),
                                 emotion_model=str(recipe))
    ray.init(namespace="raysys", include_dashboard=False, log_to_driver=False)
    print(f"cluster resources: GPU={ray.cluster_resources().get('GPU', 0)} CPU={ray.cluster_resources().get('CPU')}")
    failures = 0
    try:
        for backend in ("builtin", "pyannote"):
            pool = diarization_pool(settings, backend)
            t = time.perf_counter()
            info = pool.ready()[0]
            print(f"diarization/{backend}: num_gpus={pool.num_gpus} device={info['device']} "
                  f"parameters_on={info['parameters_on']} load {time.perf_counter() - t:.1f} s")
            failures += "cuda" not in info["device"]
            for attempt in ("cold", "warm"):
                t = time.perf_counter()
                result = diarize_file(settings, audio, backend=backend)
                print(f"  {attempt}: {time.perf_counter() - t:.2f} s wall, rtf {result['rtf']:.4f}, "
                      f"{result['num_speakers']} speakers, {len(result['segments'])} segments")
        segments = diarize_file(settings, audio)["segments"]
        for backend in ("builtin", "speechbrain"):
            pool = emotion_pool(settings, backend)
            info = pool.ready()[0]
            print(f"emotion/{backend}: num_gpus={pool.num_gpus} device={info['device']} "
                  f"parameters_on={info['parameters_on']}")
            t = time.perf_counter()
            out = analyze_file(settings, audio, segments=segments, backend=backend)
            print(f"  {len(out['segments'])} segments in {time.perf_counter() - t:.2f} s")
        pool = embedding_pool(settings)
        info = pool.ready()[0]
        t = time.perf_counter()
        embed_texts(settings, ["a sentence to embed"] * 256)
        print(f"embedding: num_gpus={pool.num_gpus} parameters_on={info['parameters_on']} "
              f"256 sentences in {time.perf_counter() - t:.2f} s")
    finally:
        shutdown_pools()
        ray.shutdown()
    print("gpu_check: OK" if not failures else f"gpu_check: {failures} model(s) not on cuda")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
