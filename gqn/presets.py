"""train_gqn.py's presets: defaults for a purpose, as flag values (training and model flags alike); flags still win."""

PRESETS = {
    "cpu-demo": dict(dataset="rooms_ring", image_size=32, batch_size=16, max_context=5, min_context=3, steps=4,
                     latent=16, hidden=48, r_channels=64, kernel=3, sigma_initial=2.0, sigma_final=2.0, sigma_steps=500,
                     lr_initial=1e-3, lr_final=2.5e-4, lr_steps=2000, lr_warmup_steps=250, max_steps=2000,
                     minutes=0.0, val_scenes=64, val_every=250, log_every=25, checkpoint_every=250,
                     train_scenes=2000, average_steps=100, ray_depths=12),
    "cpu-long": dict(dataset="rooms_ring", image_size=32, batch_size=16, max_context=5, steps=4, latent=16,
                     hidden=48, r_channels=64, kernel=3, sigma_initial=2.0, sigma_final=2.0, sigma_steps=500,
                     lr_initial=1e-3, lr_final=2.5e-4, lr_steps=5000, lr_warmup_steps=250, lr_cooldown_steps=7000,
                     lr_cooldown_final=2.5e-5, max_steps=15000, minutes=0.0, val_scenes=128, val_every=500,
                     log_every=25, checkpoint_every=250, train_scenes=20000, ray_depths=12),
    "dry-run": dict(dataset="rooms_ring", image_size=16, batch_size=4, max_context=3, steps=2, latent=4, hidden=8,
                    r_channels=8, max_steps=4, val_scenes=4, val_every=2, log_every=1, checkpoint_every=2,
                    train_scenes=40, workers=0),
}
