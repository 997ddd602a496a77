#!/bin/sh
# Regenerate src/v4l2_bindings.rs (needs: apt-get install libclang-dev linux-libc-dev; cargo install bindgen-cli).
set -e
cd "$(dirname "$0")"
bindgen wrapper.h -o src/v4l2_bindings.rs
