"""Reinforcement learning from human feedback: the TRL algorithms (dpo, grpo, rloo), PPO, and the RL evaluation."""
