#!/bin/bash
# What one rented GPU does in about 10 minutes, in one call:
#   1. retrains the bundled world model from scratch (a wider VAE, then text encoder + UNet at
#      batch 256), time-boxed by --stop-after-minutes and exported to $WORLD_OUT; with the shipped
#      model's last recipe from the first step (offset noise 0.2, half of every batch at t >= 800),
#      which made "a car, day" follow its caption (README, "The bundled world model");
#   2. measures Stable Diffusion 1.5's architecture (random weights, 512x512) with
#      benchmarks/speed.py --only gpu, on a copy of benchmarks/results/speed.json in $OUT/speed.
# Usage:   OUT=/some/folder bash benchmarks/gpu_session.sh      (RESUME=1: continue $WORLD_WORK)
# Dry run: LOCAL=1 bash benchmarks/gpu_session.sh   (tiny sizes on the CPU: checks the plumbing)
# Then, on the CPU machine: evaluate the new world (python -m noiseclr_lite.toyworld evaluate
# --model DIR), ship it if it clears more bars, remake the directions and refresh the notebooks.
# Wheels in .whl/ (packages the GPU machine lacks, e.g. diffusers) are installed first if present.
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/gpu_session}; mkdir -p "$OUT"
WORLD_OUT=${WORLD_OUT:-/tmp/world}; WORLD_WORK=${WORLD_WORK:-/tmp/world-work}
# from scratch unless asked: a dry run's leftovers must not become the start of the real run
[ -n "$RESUME" ] || rm -rf "$WORLD_OUT" "$WORLD_WORK"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
if [ -z "$LOCAL" ]; then
  # one call of at most 600 s: 6 min for the world (the VAE gets at most 1.7 of them; the world's
  # timeout only catches a hang), then 180 s for the speed grid
  DEVICE=cuda; VAE_STEPS=6000; VAE_BATCH=64; NUM=100000; UNET_BATCH=256; MINUTES=6.0; VAE_MIN=1.7; WORKERS=12
  CKPT=500; EXPORT=1000; WORLD_T=390; SPEED_T=180; SPEED_ARGS=""
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/versions.txt" 2>&1
else
  DEVICE=auto; VAE_STEPS=4; VAE_BATCH=4; NUM=20; UNET_BATCH=4; MINUTES=0.3; VAE_MIN=0.1; WORKERS=2
  CKPT=2; EXPORT=1000; WORLD_T=600; SPEED_T=60; SPEED_ARGS="--gpu-n 1 --gpu-k 2"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=10
python3 -c "import torch, diffusers, transformers; print('versions', torch.__version__, diffusers.__version__,
transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/versions.txt"
START=$(date +%s)
timeout $WORLD_T python3 -m noiseclr_lite.toyworld train --device $DEVICE --render-workers $WORKERS \
  --out-dir "$WORLD_OUT" --work-dir "$WORLD_WORK" --seed 0 \
  --vae-steps $VAE_STEPS --vae-batch $VAE_BATCH --vae-lr 0.001 --vae-target-psnr 32.0 --vae-kl-weight 1e-06 \
  --vae-eval-images 256 --vae-max-minutes $VAE_MIN --vae-widths 32 64 128 \
  --num-images $NUM --unet-steps 200000 --unet-batch $UNET_BATCH --unet-lr 0.0006 --warmup-steps 500 \
  --min-snr-gamma 5.0 --noise-offset 0.2 --high-noise-share 0.5 --high-noise-from 800 \
  --attribute-dropout 0.3 --caption-dropout 0.1 --ema-max-decay 0.9999 \
  --checkpoint-every $CKPT --export-every $EXPORT --unet-widths 64 128 128 --unet-layers-per-block 1 \
  --stop-after-minutes $MINUTES > "$OUT/world.log" 2>&1
echo "world rc=$? after $(( $(date +%s) - START )) s"
grep -a "PSNR\|exported\|stopped\|reached\|Error" "$OUT/world.log" | tail -15
# the exported folder and, under world-work/, the VAE's record and the run's settings, as one tar
# in pieces of at most 15 MB
tar -C "$(dirname "$WORLD_OUT")" -cf /tmp/world.tar "$(basename "$WORLD_OUT")" \
  && tar -C "$WORLD_WORK" -rf /tmp/world.tar --transform 's,^,world-work/,' \
     vae/history.json vae/vae_training.json config.json \
  && split -b 15000000 /tmp/world.tar "$OUT/world.tar." && ls -la "$OUT"
mkdir -p "$OUT/speed" && cp benchmarks/results/speed.json "$OUT/speed/"
timeout $SPEED_T python3 benchmarks/speed.py --only gpu --gpu-precisions fp32 fp16 --gpu-repeats 2 $SPEED_ARGS \
  --out "$OUT/speed" > "$OUT/speed.log" 2>&1
echo "speed rc=$? total $(( $(date +%s) - START )) s"
grep -a "^\[speed\]" "$OUT/speed.log" | cut -c1-300 | tail -40
tail -n 5 "$OUT/speed.log"
