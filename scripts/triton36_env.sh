#!/usr/bin/env bash
# A second environment with the GPU image's Triton (3.6.0) for the ahead-of-time compile smoke test
# (tests/test_aot_compile.py::test_aot_compile_under_the_gpu_images_triton). It holds only triton; torch, numpy and
# trm_fast come from .venv through a .pth file, so it costs one ~200 MB wheel. Prints the python to use.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${TRITON_SMOKE_VERSION:-3.6.0}
ENV=.venv-triton${VERSION//./}
if [ ! -x "$ENV/bin/python" ] || ! "$ENV/bin/python" -c "import triton, sys; sys.exit(triton.__version__ != '$VERSION')" 2>/dev/null; then
  rm -rf "$ENV"
  .venv/bin/python -m venv --without-pip "$ENV" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target "$ENV/triton-only" "triton==$VERSION" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  site=$("$ENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  main_sites=$(.venv/bin/python -c "import site; print(repr(site.getsitepackages()))")
  # triton-only first (a plain path entry), then every site directory .venv sees (its own, with the .pth of the
  # editable trm_fast, and the system one when .venv was made with --system-site-packages), in .venv's order
  printf '%s\n' "$PWD/$ENV/triton-only" > "$site/00_triton_only.pth"
  printf 'import site; list(map(site.addsitedir, %s))\n' "$main_sites" > "$site/zz_main_venv.pth"
fi
"$ENV/bin/python" -c "import triton, torch, trm_fast.kernels.aot; assert triton.__version__ == '$VERSION', triton.__file__" >&2
echo "$PWD/$ENV/bin/python"
