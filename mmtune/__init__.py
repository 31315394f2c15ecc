"""mmtune: Ray Tune ablation sweeps for balanced multimodal learning."""

__version__ = "0.1.0"
