"""benchmarks/breakdown.py: the hooks time each component's calls and leave the pipeline as it was."""

from diffusers import AutoPipelineForText2Image

from benchmarks.breakdown import COMPONENTS, breakdown_line, component_times


def test_component_times_cover_each_call_and_remove_their_hooks(tiny_model_dir):
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    hooked = [pipe.text_encoder, pipe.unet, pipe.vae.decoder]
    with component_times(pipe, cuda=False) as totals:
        latents = pipe(
            ["a", "b"], num_inference_steps=1, guidance_scale=0.0, height=64, width=64, output_type="latent"
        ).images
        pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
    assert set(totals) == set(COMPONENTS) - {"transformer"}  # the components this pipeline has
    assert all(totals[c] > 0 for c in totals), totals
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in hooked)


def test_breakdown_line_shares_and_rates():
    flops = {"text_encoders": 1e9, "unet": 4e12, "vae_decode": 2e12}
    line = breakdown_line({"text_encoders": 2.0, "unet": 20.0, "vae_decode": 40.0}, images=2, wall_s=0.1, flops=flops)
    # wall 50 ms/image; unet 10 ms/image = 20% at 4e12 FLOP / 10 ms = 400 TFLOP/s; rest 50 - 31 = 19 ms
    assert line == (
        "50.00 ms/image: text_encoders 1.00 ms/image (2%, 1.0 TFLOP/s), unet 10.00 ms/image (20%, "
        "400.0 TFLOP/s), vae_decode 20.00 ms/image (40%, 100.0 TFLOP/s); everything else 19.00 ms/image (38%)"
    )
