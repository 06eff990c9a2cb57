"""The GQN toolkit's library: datasets, scene format and loader, synthetic scenes, schedules, images, checkpoints."""
