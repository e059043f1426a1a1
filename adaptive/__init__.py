"""The adaptive layer: what this device is, what it should run, and how to stay within budget.

    adaptive.probe       probe(root) -> HardwareProfile (files under root; nvidia-smi via a runner)
    adaptive.readers     what each of those files says (cpuinfo, dpkg, L4T, thermal zones, nvidia-smi's CSV)
    adaptive.artifacts   discover_artifacts(paths, profile) -> usable artifacts + rejected ones
    adaptive.plan        plan(profile, artifacts, frames, PlanOptions) -> PlanReport (calibrated or static)
    adaptive.controller  RuntimeController / decide(): the closed loop on latency, drops, temperature
    adaptive.schedule    FrameScheduler, MotionGate: which frames go to the detector

Submodules are imported where used: `adaptive.probe` stays cheap for `edge-agent probe`.
"""
