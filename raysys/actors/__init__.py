"""Ray actors over the model backends and the warehouse: pools, deadlines, typed entry points.

Layer 2: may import models, storage and the foundation (config, errors, constants, paths, audio,
runtime); imported by ingest, analytics, tasks and above. Actors know no task.
"""
