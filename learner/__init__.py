"""The learner role: the replay buffer, the training step and its engines, teacher
weights, checkpoints, held-out evaluation, and the service that runs them."""
