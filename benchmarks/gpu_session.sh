#!/bin/bash
# What one rented GPU does in about 10 minutes, in one call, part by part (PARTS, in this order):
#   speed    Stable Diffusion 1.5's architecture (random weights, 512x512) with
#            benchmarks/speed.py --only gpu, on a copy of benchmarks/results/speed.json in $OUT/speed;
#   world    retrains the bundled world model from scratch (a wider VAE, then text encoder + UNet at
#            batch 256), time-boxed by --stop-after-minutes and exported to $WORLD_OUT; with the shipped
#            model's last recipe from the first step (offset noise 0.2, half of every batch at t >= 800),
#            which made "a car, day" follow its caption (README, "The bundled world model");
#   quality  benchmarks/quality.py on the GPU in float32 (comparable with the CPU reports), the domains
#            over 4 processes, with QUALITY_ARGS (default: K = 10, tau 0.1 on 256 training images per
#            domain, seeds 2-5); its report and --resume cache come back as $OUT/quality.tgz, so a run cut
#            off by its time limit is finished on the CPU with the same command and --out. The cache key
#            holds the bundled model's absolute path: run from a copy of the tree at the CPU checkout's
#            path (on 2026-12-04: cp -a . /work/main && cd /work/main) for the CPU to read it back.
# Usage:   OUT=/some/folder PARTS="speed quality" bash benchmarks/gpu_session.sh   (default PARTS="world", since
#          the speed grid was measured on 2026-12-04; the world alone can take WORLD_T=560 MINUTES=8.5;
#          RESUME=1: continue $WORLD_WORK)
# Dry run: LOCAL=1 bash benchmarks/gpu_session.sh   (tiny sizes on the CPU: checks the plumbing)
# Then, on the CPU machine: evaluate the new world (python -m noiseclr_lite.toyworld evaluate
# --model DIR), ship it if it clears more bars, remake the directions and refresh the notebooks.
# Wheels in .whl/ (packages the GPU machine lacks, e.g. diffusers) are installed first if present.
# A rented machine that receives a copy of the working tree with a size limit (64 MiB where this ran
# on 2026-12-04) will not take benchmarks/results (over 80 MB of reports): move it aside for the call,
# leaving only results/speed.json (the speed part starts from it), and put it back afterwards.
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
PARTS=${PARTS:-"world"}
QUALITY_SAMPLES=benchmarks/results/cache/samples256
if [ -z "$LOCAL" ]; then
  # one call of at most 600 s. speed + world: 180 s for the speed grid, then 6 min for the world (the VAE
  # gets at most 1.7 of them; the world's timeout only catches a hang); speed + quality: 240 s + 270 s
  DEVICE=cuda; VAE_STEPS=6000; VAE_BATCH=64; NUM=100000; UNET_BATCH=256; MINUTES=${MINUTES:-6.0}; VAE_MIN=1.7; WORKERS=12
  CKPT=500; EXPORT=1000; WORLD_T=${WORLD_T:-390}; SPEED_T=${SPEED_T:-180}; SPEED_ARGS=""
  QUALITY_T=${QUALITY_T:-270}; PER_DOMAIN=256; QUALITY_DEVICE=cuda
  QUALITY_ARGS=${QUALITY_ARGS:-"-k 10 --tau 0.1 --steps 150 --lr 1e-2 --eval-images 8 --inference-steps 10
    --calibration-images 2 --calibration-iters 6 --max-scale 256 --hspace-min-scale 0.0625 --hspace-max-scale 16
    --min-scale 0.125 --methods NoiseCLR random text --no-interference --seeds 2 3 4 5
    --tag k10-tau0.1-samples256-seeds2345"}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/versions.txt" 2>&1
else
  DEVICE=auto; VAE_STEPS=4; VAE_BATCH=4; NUM=20; UNET_BATCH=4; MINUTES=0.3; VAE_MIN=0.1; WORKERS=2
  CKPT=2; EXPORT=1000; WORLD_T=600; SPEED_T=60; SPEED_ARGS="--gpu-n 1 --gpu-k 2"
  QUALITY_T=600; PER_DOMAIN=8; QUALITY_DEVICE=cpu; QUALITY_ARGS=${QUALITY_ARGS:-"--quick --domains face cat --no-interference --tag local"}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=10
python3 -c "import torch, diffusers, transformers; print('versions', torch.__version__, diffusers.__version__,
transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/versions.txt"
START=$(date +%s)

speed() {
  mkdir -p "$OUT/speed" && cp benchmarks/results/speed.json "$OUT/speed/"
  timeout $SPEED_T python3 benchmarks/speed.py --only gpu --gpu-precisions fp32 fp16 --gpu-repeats 2 $SPEED_ARGS \
    --out "$OUT/speed" > "$OUT/speed.log" 2>&1
  echo "speed rc=$? after $(( $(date +%s) - START )) s"
  grep -a "^\[speed\]" "$OUT/speed.log" | cut -c1-300 | tail -40
  tail -n 5 "$OUT/speed.log"
}

world() {
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
}

quality() {
  [ -n "$RESUME" ] || rm -rf /tmp/quality
  # the training images (the same renderer and seed as data/samples, more per domain); the folder's
  # path is part of the cache key, so it is the one the CPU runs used
  python3 -m noiseclr_lite.toyworld samples --out $QUALITY_SAMPLES --per-domain $PER_DOMAIN > "$OUT/quality.log" 2>&1
  # float32: load_pipeline's GPU default is float16, whose numbers the CPU reports could not be pooled with
  timeout $QUALITY_T python3 benchmarks/quality.py $QUALITY_ARGS --samples $QUALITY_SAMPLES --device $QUALITY_DEVICE \
    --dtype float32 --resume --no-progress --processes 4 --threads 2 --out /tmp/quality >> "$OUT/quality.log" 2>&1
  echo "quality rc=$? after $(( $(date +%s) - START )) s"
  grep -a "NoiseCLR\|random\|text\|took\|Error" "$OUT/quality.log" | cut -c1-200 | tail -25
  # the report (if it finished) and the cache of finished units (to resume on the CPU), one file
  tar -C /tmp -czf "$OUT/quality.tgz" quality && ls -la "$OUT"
}

for part in $PARTS; do $part; done
