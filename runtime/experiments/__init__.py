"""The published experiments (:mod:`.scenarios`: public-cloud splits against
the static baselines, private cloud, isolation, re-allocation cost, serving
policies, RNN tenants) on the simulator, and ``vfpga bench``'s report
(:mod:`.report`: tables, plots, the headline).

Imports: the simulator, the models, the compiler.
"""
