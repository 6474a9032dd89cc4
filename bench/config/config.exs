import Config

# The library's checkout has the Python environment bin/setup made; use it rather than one of
# the bench's own.
config :dspex_native_pool, venv: Path.expand("../../.venv", __DIR__)
