#!/usr/bin/env bash
# Issue 12's GPU checks, part 1 of 2, on this machine (≈ 8 min from a warm target/): the GPU
# machine has CUDA, PyTorch and transformers but no Rust toolchain and no network, so everything
# it runs is built and gathered here into gpu-kit/ (git-ignored; the device tool carries it):
#   gpu-kit/tda.xz     `tda` built with burn-cuda (`--features cuda`), stripped and xz-compressed
#                      (69 MB → 13 MB: the device tool carries at most 64 MiB; it also runs --device cpu)
#   gpu-kit/whl/       Kronfluence 1.0.1 and einconv, the one dependency the GPU image lacks
#   gpu-kit/COMMIT     the commit the build is of (`run.sh` prints it; a kit of another commit
#                      than HEAD, or of a tree with uncommitted Rust changes, is rebuilt)
# Part 2 runs there: the device tool's `run` with carry ["gpu-kit"], timeout_s 600 and the command
#   bash benches/gpu/run.sh
#
#   bash benches/gpu/prepare.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
kit=gpu-kit
commit="$(git rev-parse HEAD)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo -dirty)"
if [ -f "$kit/tda.xz" ] && [ "$(cat "$kit/COMMIT" 2>/dev/null)" = "$commit" ] && ls "$kit"/whl/*.whl >/dev/null 2>&1; then
  echo "$kit is current ($commit)"; exit 0
fi
rm -f "$kit/COMMIT"
mkdir -p "$kit/whl"
cargo build --release -q -p tda-cli --features cuda --bin tda
cp target/release/tda "$kit/tda"
strip "$kit/tda"
xz -T0 -6 -f "$kit/tda"
# The plain build again, so target/release/tda stays the one the tests and benches expect.
cargo build --release -q --workspace --bin tda
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$kit/whl" kronfluence==1.0.1 einconv==0.1.0
xz -dc "$kit/tda.xz" > "$kit/tda-check" && chmod +x "$kit/tda-check" && "$kit/tda-check" --version
rm "$kit/tda-check"
echo "$commit" > "$kit/COMMIT"
ls -la "$kit" "$kit/whl"
