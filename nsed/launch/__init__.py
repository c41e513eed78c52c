"""Front end: ``nsed up`` / ``nsed down``, the team's vLLM servers started, watched, stopped.

``plan`` places the self-hosted models on GPUs and builds each ``vllm serve`` argv (pure),
``gpus`` finds the GPUs and their memory, ``supervisor`` runs a plan with no orphan left behind,
``team_file`` writes the team TOML that points at the servers, ``cli`` is the commands.
"""

from nsed.launch.plan import GpuUse, LaunchPlan, PlannedModel, place, plan_launch

__all__ = ["GpuUse", "LaunchPlan", "PlannedModel", "place", "plan_launch"]
