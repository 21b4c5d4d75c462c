# Sourced by the GPU scripts (gpu_check.sh, gpu_tokenizer_sweep.sh): where diffusers, pydantic or insightface is
# missing on the device machine (its image lacks them and reaches no index), install them from the wheels in
# .gpuwheels/. Made here, for the device's Python 3.12, then carried (git-ignored via .git/info/exclude, named in the
# device call's `carry`):
#   pip download -d .gpuwheels --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 diffusers==0.42.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types \
#     typing-inspection insightface==2.1
if ! python3 -c "import diffusers, pydantic, insightface" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-index .gpuwheels/*.whl || exit 1
fi
