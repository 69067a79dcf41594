"""ssd_jax: SSD (Liu et al., 2016) in JAX/Flax."""
