from discadapt.cli import main


def test_inspect_tiny(capsys):
    assert main(["inspect", "--tiny", "--layers", "mid_block", "up_blocks.1"]) == 0
    out = capsys.readouterr().out
    assert "StableDiffusionPipeline" in out and "pooled 32, tokens 32" in out
    assert out.splitlines()[-2].split() == ["mid_block", "64", "4x4", "4"]
    assert out.splitlines()[-1].split() == ["up_blocks.1", "64", "16x16", "1"]


def test_inspect_bad_layer(capsys):
    assert main(["inspect", "--tiny", "--layers", "up_blocks.9"]) == 2
    assert "names 'up_blocks.9' but this UNet has no such module" in capsys.readouterr().err
