"""The gateway: rollout API for RL trainers in front of a pool of SGLang-protocol engines."""
