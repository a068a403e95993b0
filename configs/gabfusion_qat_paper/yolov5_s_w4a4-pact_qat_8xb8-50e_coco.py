# Baseline arm: W4A4 PACT QAT of the float YOLOv5s on COCO 2017. Conv
# inputs use PACT with a learned upper clip and, for the negative range of
# SiLU, a learned lower clip. Weights use DoReFa (as in the PACT paper),
# rescaled to the float weights' maximum. The first conv and the
# prediction convs stay at 8 bit.
_base_ = ['./yolov5_s_w4a4-lsq_qat_8xb8-50e_coco.py']

model = dict(
    quantizer=dict(
        w_fake_quant=dict(_delete_=True, type='DoReFaWeightFakeQuantize'),
        a_fake_quant=dict(
            _delete_=True, type='PACTFakeQuantize', lower_bound='learnable'
        ),
    )
)
