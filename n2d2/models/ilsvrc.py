"""ImageNet (ILSVRC) preprocessing shared by the model zoo's ImageNet models."""
from n2d2.transform import ColorSpace, Composite, Flip, PadCrop, RangeAffine, Rescale, SliceExtraction


def ILSVRC_preprocessing(size: int = 224, margin: int = 32):
    """(static Composite, on-the-fly Composite) for ImageNet training with N2D2's recipe.

    Static (applied once per image): rescale to size+margin keeping the aspect ratio, pad/crop
    to size+margin, BGR, subtract the BGR channel means and scale by 0.017, then a centre
    size x size crop for every partition but Learn. On the fly: a random size x size crop and a
    random horizontal flip, Learn only.
    """
    static = Composite([
        Rescale(width=size + margin, height=size + margin, keep_aspect_ratio=True, resize_to_fit=False),
        PadCrop(width=size + margin, height=size + margin),
        ColorSpace(color_space="BGR"),
        RangeAffine(first_operator="Minus", first_value=[103.94, 116.78, 123.68],
                    second_operator="Multiplies", second_value=[0.017]),
        SliceExtraction(width=size, height=size, offset_x=margin // 2, offset_y=margin // 2, apply_to="NoLearn"),
    ])
    on_the_fly = Composite([
        SliceExtraction(width=size, height=size, random_offset_x=True, random_offset_y=True, apply_to="LearnOnly"),
        Flip(random_horizontal_flip=True, apply_to="LearnOnly"),
    ])
    return static, on_the_fly
